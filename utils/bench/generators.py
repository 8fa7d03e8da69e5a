"""Generators stage: samples per second of ``SpatialFrames`` / ``FlowStacks`` as ``model.fit`` gets
them (Keras' own enqueuer), with worker threads, worker processes and the decoded-flow cache, over
1..N workers, in one run; and what OpenCV's reduced-size JPEG decoding would change."""
from __future__ import annotations

import math
import os
import time

import cv2
import numpy as np

from utils.bench.context import Bench
from utils.bench.machine import time_until, worker_grid
from utils.bench.rows import DERIVED, row

FLOW_ITEM = "FlowStacks (L={})"


def loaders(bench: Bench) -> list[tuple[str, str, dict]]:
    """(generator, loader name, PyDataset options) of every loader compared. The device check
    leaves out Keras' processes: they are forked from a process that holds a GPU runtime."""
    cache = bench.workdir / "flow-cache"
    flow = FLOW_ITEM.format(bench.s.stack_length)
    every = [("SpatialFrames", "threads", {}), ("SpatialFrames", "processes", {"use_multiprocessing": True}),
             (flow, "threads", {}), (flow, "processes", {"use_multiprocessing": True}),
             (flow, "threads, flow cache", {"flow_cache": cache})]
    return [loader for loader in every if not (bench.s.device and not bench.s.quick and loader[1] == "processes")]


def make_dataset(bench: Bench, index, generator: str, items_per_video: int, workers: int, options: dict):
    from utils.generators import FlowStacks, SpatialFrames
    common = dict(training=True, image_size=224, batch_size=bench.s.generator_batch, workers=workers,
                  max_queue_size=max(4, 2 * workers), **options)
    if generator == "SpatialFrames":
        return SpatialFrames(index, frames_per_video=items_per_video, **common)
    return FlowStacks(index, stack_length=bench.s.stack_length, stacks_per_video=items_per_video, **common)


def fit_rate(dataset, min_batches: int) -> float:
    """Samples/s of ``dataset`` through Keras' PyDataset adapter (the enqueuer ``fit`` uses: worker
    threads or processes), the first batch (start-up of the workers) excluded."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter   # what fit() builds
    iterator = PyDatasetAdapter(dataset, shuffle=False).get_numpy_iterator()
    items, started = 0, None
    for k, batch in enumerate(iterator):
        if k == 0:
            started = time.perf_counter()
            continue
        items += len(batch[1])
        if k >= min_batches:
            break
    seconds = time.perf_counter() - started
    for _ in iterator:      # let the enqueuer finish the epoch and stop its workers
        pass
    return items / seconds


def stage_generators(bench: Bench) -> None:
    index = bench.rawframes_index(bench.s.stack_length)
    batch = bench.s.generator_batch
    grid = list(bench.s.generator_workers) or (sorted({1, bench.cores}) if bench.s.device else worker_grid(bench.cores))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    bench.log(f"generators: {len(index)} clip(s), 224x224, batch {batch}, workers {grid}; load average {load}")
    single: dict[tuple[str, str], float] = {}
    for generator, loader, options in loaders(bench):
        if "flow_cache" in options:                               # fill the cache first (a first epoch)
            warm = make_dataset(bench, index, generator, 1, 1, options)
            for b in range(len(warm)):
                warm[b]
        if loader != "processes":                  # the cost of a sample in CPU time: robust to other load
            data = make_dataset(bench, index, generator, math.ceil(4 * batch / len(index)), 1, options)
            data[0]
            started = time.thread_time()
            items = sum(len(data[b][1]) for b in range(1, len(data)))
            bench.add(row("generators", generator, f"1 thread, {loader.replace('threads', 'serial')}, 224x224",
                          "samples_per_cpu_second", items / (time.thread_time() - started),
                          note="__getitem__ in this thread, its CPU time (other work on the machine does not count)"))
        for workers in grid:
            # Enough batches for min_time at the expected rate (one worker's, times the workers).
            expected = single.get((generator, loader), 50.0) * min(workers, bench.cores)
            batches = max(3 * workers, math.ceil(expected * bench.s.min_time / batch)) + 1
            data = make_dataset(bench, index, generator, math.ceil((batches + 1) * batch / len(index)), workers,
                                options)
            rate = fit_rate(data, batches)
            cores = min(workers, bench.cores)
            setting = f"{workers} worker {loader}, 224x224, batch {batch}"
            bench.add(row("generators", generator, setting, "samples_per_s", rate,
                          note=f"Keras' PyDataset enqueuer; load average at start {load}"),
                      row("generators", generator, setting, "samples_per_s_per_core", rate / cores, status=DERIVED))
            if workers == 1:
                single[(generator, loader)] = rate
            elif (generator, loader) in single:
                bench.add(row("generators", generator, setting, "scaling_efficiency",
                              rate / (cores * single[(generator, loader)]), status=DERIVED,
                              note=f"rate / ({cores} x one worker's); target >= 0.8"))
    reduced_decode(bench, index)


def reduced_decode(bench: Bench, index) -> None:
    """OpenCV's IMREAD_REDUCED_GRAYSCALE_2 (decode at half size) for the flow JPEGs: the decode time
    saved, and how far the 224x224 stacks it gives are from today's (not used: see the figures)."""
    from utils.generators import centre_crop_box, flow_stack_input, read_flow_uint8
    from utils.rawframes import flow_files
    folder, n_flows = index.frames_path.iloc[0], int(index.n_flows.iloc[0])
    path = flow_files(folder, 1)[0]
    timings = {}
    for name, flag in (("full size", cv2.IMREAD_GRAYSCALE), ("IMREAD_REDUCED_GRAYSCALE_2", cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        reps, seconds = time_until(lambda: cv2.imread(str(path), flag) is not None, min(bench.s.min_time, 1.0), 20)
        timings[name] = seconds / reps * 1000
        bench.add(row("generators", "flow JPEG decode", name, "ms_per_pair", timings[name],
                      note="one flow component, 320x240"))
    differences = []
    L = bench.s.stack_length
    for start in range(1, n_flows - L + 2, max(1, (n_flows - L) // 4)):
        full = read_flow_uint8(folder, start, L)
        box = centre_crop_box(*full.shape[:2])
        reduced = np.stack([cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_2)
                            for t in range(start, start + L) for p in flow_files(folder, t)], axis=-1)
        half = tuple(v // 2 for v in box)
        today = flow_stack_input(full, box, 224, False)
        other = flow_stack_input(reduced, half, 224, False)
        differences.append(np.abs(today - other))
    difference = np.concatenate([d.ravel() for d in differences])
    bench.add(row("generators", "flow JPEG decode", "IMREAD_REDUCED_GRAYSCALE_2, 224x224 centre stacks",
                  "max_abs_difference", float(difference.max()),
                  note=f"units of 20 px; mean {difference.mean() * 20:.3f} px per component. Compare the EPE that "
                       "uint8 + JPEG storage adds (flow-storage): a change of that order is not JPEG noise, so "
                       "reduced decoding is not used"))
