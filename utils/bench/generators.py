"""Generators stage: samples per second of ``SpatialFrames`` / ``FlowStacks``, one worker and N."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

from utils.bench.context import Bench
from utils.bench.machine import time_until, worker_grid
from utils.bench.rows import row


def stage_generators(bench: Bench) -> None:
    from utils.generators import FlowStacks, SpatialFrames
    index = bench.rawframes_index(bench.s.stack_length)
    size, batch = 224, bench.s.generator_batch
    per_clip = math.ceil(2 * batch / len(index))      # at least two full batches per epoch
    bench.log(f"generators: {len(index)} clip(s) x {per_clip} inputs, {size}x{size}, batch {batch}")
    datasets = {
        "SpatialFrames": SpatialFrames(index, training=True, image_size=size, batch_size=batch,
                                       frames_per_video=per_clip),
        f"FlowStacks (L={bench.s.stack_length})": FlowStacks(index, training=True, image_size=size, batch_size=batch,
                                                             stack_length=bench.s.stack_length,
                                                             stacks_per_video=per_clip),
    }
    for name, data in datasets.items():
        counter = iter(range(10**9))

        def one_batch():
            return len(data[next(counter) % len(data)][1])

        items, seconds = time_until(one_batch, bench.s.min_time, 2)
        single = items / seconds
        setting = f"1 worker, {size}x{size}, batch {batch}"
        bench.add(row("generators", name, setting, "samples_per_s", single))
        for workers in [w for w in worker_grid(2 * bench.cores) if w > 1]:
            n_batches = max(2 * workers, math.ceil(single * workers * bench.s.min_time / batch))
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda b: data[b % len(data)], range(workers)))      # warm-up
                started = time.perf_counter()
                items = sum(pool.map(lambda b: len(data[b % len(data)][1]), range(n_batches)))
                seconds = time.perf_counter() - started
            bench.add(row("generators", name, f"{workers} worker threads, {size}x{size}, batch {batch}",
                          "samples_per_s", items / seconds, note="threads, as PyDataset(workers=N) uses by default"))
