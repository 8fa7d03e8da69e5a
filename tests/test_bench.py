"""Tests for utils/bench/: the quick CLI run writes the report, merging works, the pure logic, and
the one-shot device check (scripts/device_check.sh) in its quick mode on the JAX backend.

No assertion on how fast anything is: figures are only checked to exist, be positive and have
the right units and machine description.
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils import bench
from utils.bench import MEASURED, NOT_MEASURED, Row

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "tests" / "data" / "hmdb51_clips"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny CLI run: flow (dis-fast, farneback) + extraction of one clip + one small model."""
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "utils.bench", "--quick", "--stages", "flow,extract,models",
               "--methods", "dis-fast,farneback", "--max-videos", "1", "--flow-pairs", "2", "--max-frames", "4",
               "--min-time", "0.2", "--workers", "1,2", "--size", "64", "--streams", "temporal",
               "--batch-size", "2", "--out-dir", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return out, result


def test_quick_run_writes_csv_with_machine_and_figures(quick_run):
    out, _ = quick_run
    rows = _read(out / "benchmarks.csv")
    assert list(rows[0]) == list(bench.CSV_COLUMNS)
    assert {r["stage"] for r in rows} >= {"flow-speed", "flow-quality", "flow-storage", "extract", "models"}
    # One machine, described with everything the issue asks for.
    assert len({r["machine"] for r in rows}) == 1
    machine = rows[0]["machine"]
    for part in ("CPU ", "cores", "RAM", "GPU", "Python", "Keras", "backend", "OpenCV", "NumPy"):
        assert part in machine, part
    # Throughputs are positive numbers with units.
    speed = [r for r in rows if r["stage"] == "flow-speed" and r["metric"] == "pairs_per_s"]
    assert {r["item"] for r in speed} == {"dis-fast", "farneback"}
    assert {r["setting"] for r in speed} >= {"1 process x 1 OpenCV thread", "2 processes x 1 OpenCV thread"}
    assert all(float(r["value"]) > 0 and r["unit"] == "pairs/s" and r["status"] == MEASURED for r in speed)
    extract = {r["metric"]: r for r in rows if r["stage"] == "extract"}
    assert "3 pairs" in extract["pairs_per_s"]["note"]           # one clip, first 4 frames
    assert float(extract["hours_full_hmdb51"]["value"]) > 0 and extract["hours_full_hmdb51"]["status"] == "derived"
    models = [r for r in rows if r["stage"] == "models" and r["status"] == MEASURED]
    assert {r["metric"] for r in models} == {"train_samples_per_s", "infer_samples_per_s", "compile_seconds"}
    assert all(float(r["value"]) > 0 and "64x64, batch 2" in r["setting"] for r in models)


def test_quick_run_flow_quality_matches_reference(quick_run):
    """EPE on the ground-truth fixtures is deterministic: it must match the README reference figures."""
    out, _ = quick_run
    rows = _read(out / "benchmarks.csv")
    epe = {(r["item"], r["setting"]): float(r["value"]) for r in rows
           if r["stage"] == "flow-quality" and r["metric"] == "epe_px"}
    assert ("dis-fast", "mb_RubberWhale") in epe
    for (method, pair), value in epe.items():
        reference = bench.REFERENCE[pair][method][0]
        assert value == pytest.approx(reference, rel=0.1, abs=0.05), (method, pair)
    added = [float(r["value"]) for r in rows if r["stage"] == "flow-storage" and r["metric"] == "epe_added_px"]
    assert added and all(-0.01 < a < 0.1 for a in added)       # JPEG storage costs hundredths of a pixel


def test_quick_run_markdown_has_machine_recommendation_and_not_measured_gpu(quick_run):
    out, result = quick_run
    md = (out / "benchmarks.md").read_text()
    for heading in ("## Machines", "## Recommendations", "## How long will this take", "## Optical flow: speed",
                    "## Optical flow: quality", "## Extraction end to end", "## Models: training and inference"):
        assert heading in md
    assert "OpenCV 5" in md or "OpenCV " in md
    assert "--workers " in md and "--opencv-threads " in md          # the recommendation
    assert "recommended extraction" in result.stdout                 # ... also printed
    rows = _read(out / "benchmarks.csv")
    if "none found" in rows[0]["machine"]:                            # no GPU on this machine
        assert NOT_MEASURED in md
        gpu = [r for r in rows if r["device"].startswith("GPU")]
        assert gpu and all(r["status"] == NOT_MEASURED and r["value"] == "" for r in gpu)
    assert "| task |" in md and "Extract full HMDB51 (~640k frame pairs), dis-fast | A, CPU |" in md


def test_merge_adds_other_machine_and_replaces_not_measured(quick_run, tmp_path):
    out, _ = quick_run
    for name in ("benchmarks.csv", "benchmarks.md"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    local = bench.read_csv(tmp_path / "benchmarks.csv")
    gpu_rows = [Row("models", "temporal", "demo preset: 56x56, batch 16", metric, value, "samples/s", "GPU (Fake H100 80GB)",
                    MEASURED, "", "2026-01-01 00:00 UTC", "CPU Fake, 16 usable (16 logical) cores, GPU Fake H100",
                    "feedbeef")
                for metric, value in (("train_samples_per_s", 812.0), ("infer_samples_per_s", 2650.0))]
    bench.write_csv(gpu_rows, tmp_path / "gpu.csv")

    assert bench.main(["--merge", str(tmp_path / "gpu.csv"), "--out-dir", str(tmp_path)]) == 0
    merged = bench.read_csv(tmp_path / "benchmarks.csv")
    assert {r.machine_id for r in merged} == {local[0].machine_id, "feedbeef"}
    assert len([r for r in merged if r.machine_id == local[0].machine_id]) <= len(local)
    # The measured GPU rows replace the "not measured" placeholders of the same stream and metric.
    assert not [r for r in merged if r.item == "temporal" and r.device.startswith("GPU") and r.status == NOT_MEASURED]
    md = (tmp_path / "benchmarks.md").read_text()
    assert "Fake H100" in md and "812" in md and "**B**" in md
    # Merging the same file again changes nothing.
    assert bench.main(["--merge", str(tmp_path / "gpu.csv"), "--out-dir", str(tmp_path)]) == 0
    assert len(bench.read_csv(tmp_path / "benchmarks.csv")) == len(merged)


def _speed_row(method, setting, value, machine="m1"):
    return Row("flow-speed", method, setting, "pairs_per_s", value, "pairs/s", machine_id=machine)


def test_recommend_picks_fastest_and_prefers_fewer_processes_on_ties():
    rows = [_speed_row("tvl1", "1 process x 1 OpenCV thread", 1.0),
            _speed_row("tvl1", "1 process x 4 OpenCV threads", 1.5),
            _speed_row("tvl1", "4 processes x 1 OpenCV thread", 3.9),
            _speed_row("tvl1", "8 processes x 1 OpenCV thread", 4.0),
            _speed_row("dis-fast", "1 process x 1 OpenCV thread", 99.0)]
    rec = bench.recommend(rows, "tvl1")
    assert (rec["workers"], rec["threads"]) == (4, 1)                # 3.9 is within 3 % of 4.0
    assert "--workers 4 --opencv-threads 1" in rec["text"]
    rows.append(_speed_row("tvl1", "1 process x 8 OpenCV threads", 6.0))
    assert (bench.recommend(rows, "tvl1")["workers"], bench.recommend(rows, "tvl1")["threads"]) == (1, 8)
    assert bench.recommend(rows, "tvl1", machine="other") is None
    assert bench.recommend(rows, "farneback") is None


def test_combine_replaces_rows_and_stages_of_one_machine():
    old = [Row("extract", "tvl1", "a", "pairs_per_s", 1.0, machine_id="m1"),
           Row("models", "spatial", "224", "train_samples_per_s", 2.0, machine_id="m1"),
           Row("models", "spatial", "224", "train_samples_per_s", 3.0, machine_id="m2")]
    new = [Row("extract", "tvl1", "b", "pairs_per_s", 5.0, machine_id="m1")]
    combined = bench.combine(old, new, replaced_stages={("m1", "extract")})
    assert sorted((r.machine_id, r.stage, r.setting, r.value) for r in combined) == [
        ("m1", "extract", "b", 5.0), ("m1", "models", "224", 2.0), ("m2", "models", "224", 3.0)]


def test_read_csv_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv"):
        bench.read_csv(bad)


def test_time_until_counts_items_and_reps():
    calls = []

    def step():
        calls.append(1)
        return 3

    items, seconds = bench.time_until(step, min_time=0.0, min_reps=4, warmup=2)
    assert items == 12 and len(calls) == 6 and seconds >= 0


def test_resolve_stages_expands_aliases_in_pipeline_order():
    assert bench.resolve_stages("models,flow") == ["flow-speed", "flow-quality", "flow-storage", "models"]
    assert "tvl1keras" not in bench.resolve_stages("quick")
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        bench.resolve_stages("flow,nope")


# --- the one-shot device check, tiny, on the JAX backend ----------------------------------------
def _tiny_flow_gt(folder, size=(48, 32)):
    """mb_RubberWhale shrunk to ``size``: frames INTER_AREA, ground truth nearest (unknowns kept) and scaled."""
    import cv2
    import numpy as np
    from utils.flow import FLO_MAGIC, UNKNOWN_FLOW, read_flo
    source, target = ROOT / "tests" / "data" / "flow_gt" / "mb_RubberWhale", folder / "mb_RubberWhale"
    target.mkdir(parents=True)
    for name in ("frame1.png", "frame2.png"):
        cv2.imwrite(str(target / name), cv2.resize(cv2.imread(str(source / name)), size, interpolation=cv2.INTER_AREA))
    gt = read_flo(source / "gt.flo")
    small = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
    known = np.all(np.abs(small) < UNKNOWN_FLOW, axis=-1)
    small[known] *= np.float32([size[0] / gt.shape[1], size[1] / gt.shape[0]])
    with open(target / "gt.flo", "wb") as file:
        np.float32(FLO_MAGIC).tofile(file)
        np.int32(size).tofile(file)
        small.astype(np.float32).tofile(file)
    return folder


def test_a_budgeted_run_gives_every_stage_a_row_skipped_for_time():
    """The device check's budget: what does not fit still gets a row, "skipped: budget"."""
    settings = bench.Settings.preset(quick=True, device=True, time_budget=0.0, stage_budget={"extract-cpu": 1.0})
    rows, failed = bench.run_stages(["extract-cpu", "tvl1keras-parity"], settings, log=lambda text: None)
    assert not failed and [(r.stage, r.status) for r in rows] == [("extract-cpu", bench.SKIPPED),
                                                                    ("tvl1keras-parity", bench.SKIPPED)]
    md = bench.Report(rows).render("test")
    assert md.count("_skipped: budget: the budget ran out before this stage_") == 2


def _device_check(out, *options, **env):
    command = ["bash", str(ROOT / "scripts" / "device_check.sh"), str(out), "--quick", *options]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "SMOKE_TIMEOUT": "600", "JAX_COMPILATION_CACHE_DIR": str(out.parent / "jax-cache"), **env}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def _stand_in_keras(folder, body: str) -> str:
    """A folder holding a package ``keras`` that imports (the check's first test) but is not Keras."""
    (folder / "keras").mkdir(parents=True)
    (folder / "keras" / "__init__.py").write_text("import sys, time\n__version__ = '0'\n" + body)
    return str(folder)


def test_device_check_stops_at_the_smoke_test_when_keras_is_broken(tmp_path):
    """Keras imports but does not work: the check stops, says why, and measures nothing."""
    result = _device_check(tmp_path / "device", PYTHONPATH=_stand_in_keras(tmp_path / "site", ""))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "SMOKE TEST FAILED" in (tmp_path / "device" / "smoke.log").read_text()
    assert "device check STOPPED: the smoke test failed" in result.stderr
    assert not list((tmp_path / "device").glob("benchmarks*.csv"))


def test_device_check_kills_a_smoke_test_past_its_time(tmp_path):
    """A smoke test that hangs (here: a Keras whose import sleeps in it) is killed at SMOKE_TIMEOUT."""
    started = time.monotonic()
    result = _device_check(tmp_path / "device", SMOKE_TIMEOUT="2", PYTHONPATH=_stand_in_keras(
        tmp_path / "site", "if '--smoke' in sys.argv:\n    time.sleep(300)\n"))
    assert result.returncode == 1 and "ran past 2 s" in result.stderr and time.monotonic() - started < 60
    assert not list((tmp_path / "device").glob("benchmarks*.csv"))


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_device_check_writes_every_gpu_figure_on_jax(tmp_path):
    """``scripts/device_check.sh OUT --quick``: the smoke test, then the GPU check with tiny sizes on the
    JAX backend (as on a GPU machine without TensorFlow), every figure it is meant to write."""
    out = tmp_path / "device"
    result = _device_check(out, "--flow-gt", str(_tiny_flow_gt(tmp_path / "gt")))
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "smoke test passed" in (out / "smoke.log").read_text()
    assert list((tmp_path / "jax-cache").iterdir())                      # the persistent compilation cache
    rows = bench.read_csv(out / "benchmarks.csv")
    assert "backend jax" in rows[0].machine and not [r for r in rows if r.status == NOT_MEASURED and r.device != "GPU"]

    def value(stage, metric, item=None, setting=None):
        found = [r for r in rows if r.stage == stage and r.metric == metric and (item is None or r.item == item)
                 and (setting is None or setting in r.setting) and r.value is not None]
        assert found, (stage, metric, item, setting)
        return found[0].value

    speed = [r.setting for r in rows if r.stage == "tvl1keras" and r.metric == "pairs_per_s"]
    assert [s.split("; ")[:2] for s in speed] == [
        ["defaults", "clip brush_hair, 16 pairs"],
        ["defaults", "mix of 12 pairs, 2 of each clip (brush_hair, climb, climb_stairs, golf, punch, shoot_bow)"],
        ["chunk=2", "mix of 12 pairs, 2 of each clip (brush_hair, climb, climb_stairs, golf, punch, shoot_bow)"]]
    assert value("tvl1keras", "pairs_per_s", "tvl1-keras") > 0 and value("tvl1keras", "batch_pairs") == 16
    assert value("tvl1keras", "peak_memory_mib") > 0 and value("tvl1keras", "compile_seconds") > 0
    assert value("tvl1keras-parity", "epe_ratio_vs_opencv", "tvl1-keras") == pytest.approx(1.0, abs=0.01)
    stages = [r.stage for r in rows]
    assert max(i for i, s in enumerate(stages) if s == "tvl1keras") < stages.index("tvl1keras-parity")
    assert value("extract-cpu", "pairs_per_s", setting="2 process(es)") > 0
    assert 0 < value("extract-cpu", "scaling_efficiency") < 1.5
    assert value("extract-batched", "flow_only_pairs_per_s") > 0
    assert value("extract-batched", "end_to_end_vs_flow_only") > 0
    for loader in ("threads,", "processes,", "threads, flow cache"):
        assert value("generators", "samples_per_s", "FlowStacks (L=10)", f"2 worker {loader}") > 0
    for metric in ("train_samples_per_s", "fit_samples_per_s", "generator_keeps_up", "infer_samples_per_s"):
        assert value("models", metric, "temporal", "mixed_float16") > 0
    assert value("eval", "inputs_per_s", "temporal") > 0
    md = (out / "benchmarks.md").read_text()
    assert "## TV-L1 in Keras: speed" in md and "## Batched extraction: the CPU side" in md and "mix of 12 pairs" in md
