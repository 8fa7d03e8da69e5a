"""Demo stage: making the built-in demo data set and extracting it; its training times from the models stage."""
from __future__ import annotations

import shutil
import time

from utils.bench.context import Bench
from utils.bench.flow import recommended_workers
from utils.bench.models import training_preset
from utils.bench.rows import DERIVED, row
from utils.config import Config


def stage_demo(bench: Bench) -> None:
    from utils.demo_data import DEMO_SETTINGS, demo_flow_options, make_demo_dataset
    from utils.extract import extract_dataset
    method = bench.s.demo_method or DEMO_SETTINGS.get("flow_method", bench.s.default_method)
    if bench.s.quick and method not in bench.s.methods:
        method = bench.s.methods[0]
    method = (bench.extractable([method]) or bench.extractable(bench.s.methods))[0]
    root = bench.workdir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    make_demo_dataset(root, seed=0)
    make_s = time.perf_counter() - started
    workers, threads = recommended_workers(bench, method)
    bench.log(f"demo: made in {make_s:.1f} s; extracting with {method}, {workers} worker(s)")
    started = time.perf_counter()
    options = demo_flow_options(method)                 # as notebook 01 on the demo
    summary = extract_dataset(root / "videos", root / "rawframes", method, workers, opencv_threads=threads,
                              progress=False, method_options=options)
    extract_s = time.perf_counter() - started
    setting = f"{summary.done} clips, {method}{' ' + str(options) if options else ''}, {workers} worker(s)"
    bench.add(row("demo", "make_demo_dataset", f"{summary.done} clips", "seconds", make_s),
              row("demo", "extract", setting, "seconds", extract_s),
              row("demo", "extract", setting, "pairs_per_s", summary.frame_pairs / extract_s))
    try:
        from utils.dataset import build_index
        index = build_index(Config(dataset=str(root)))
        n_train = int((index["subset"] == "train").sum())
    except Exception as error:  # noqa: BLE001
        bench.log(f"  cannot index the demo data set ({error}); no epoch estimate")
        return
    for r in list(bench.rows):
        if r.stage == "models" and r.metric == "train_samples_per_s" and r.value and \
                r.setting.startswith("demo preset"):
            cfg = training_preset(r.item, "demo")
            per_clip = cfg.get("frames_per_video") or cfg.get("stacks_per_video") or 1
            epochs = cfg.get("epochs") or cfg.get("warmup_epochs", 0) + cfg.get("finetune_epochs", 0)
            samples = n_train * per_clip
            setting = f"{n_train} clips x {per_clip}, {r.setting.split(': ', 1)[-1]}"
            bench.add(row("demo", f"{r.item} training", setting, "epoch_minutes", samples / r.value / 60,
                          status=DERIVED, device=r.device, note="model time only; from the models stage"),
                      row("demo", f"{r.item} training", setting, "schedule_hours",
                          epochs * samples / r.value / 3600, status=DERIVED, device=r.device,
                          note=f"{epochs} epochs of the demo preset"))
