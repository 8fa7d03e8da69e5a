"""Extraction beyond one machine: a Ray cluster, or a shard of the video list per job.

* ``--ray [ADDRESS]`` (:func:`run_ray`): one Ray task per video (``ray.init(address=ADDRESS)``; a
  local Ray instance when no address is given). Each task runs the same per-video extraction as a
  local worker process (:func:`utils.extract_job.run_job`: a hidden temporary folder renamed when
  complete) into the output folder, which must be shared by every node; the driver skips finished
  videos, collects the failures and writes the one failures file, as a local run does.
* ``--shard K/N`` (:func:`shard_videos`): this run takes videos K, K+N, K+2N, ... of the sorted list
  (1-based K), the same split on every run, for array jobs of any scheduler (Slurm, ...). Each
  shard writes its own failures and warnings files (``extraction_failures.shard-K-of-N.csv``,
  ``extraction_warnings.shard-K-of-N.csv``; shards run at the same time); one final run without
  ``--shard`` skips the finished videos, retries the failed ones and writes the common failures file.

A run owns its videos: the temporary folders of its videos left by an earlier run (on whichever
node) are removed when it starts, so run one job per shard (or one Ray run) per output folder.
Ray is optional: ``pip install -r requirements-cluster.txt``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2

from utils.config import REPO_ROOT
from utils.extract_job import Job, Result, run_job
from utils.rawframes import TMP_PREFIX


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; a clear error otherwise (for argparse ``type=``)."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 3/16), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


def shard_videos(videos: Sequence[Path], shard: tuple[int, int], videos_dir: Path) -> list[Path]:
    """Shard ``K/N`` of ``videos``: every N-th video of the list sorted by path under ``videos_dir``,
    starting with the K-th. The same split on every run whatever is already done, and about the
    same number of videos (and of each class) in every shard."""
    k, n = shard
    videos_dir = Path(videos_dir)

    def key(path: Path) -> str:
        try:
            return Path(path).relative_to(videos_dir).as_posix()
        except ValueError:
            return Path(path).as_posix()
    return sorted(videos, key=key)[k - 1::n]


def shard_file(name: str, shard: tuple[int, int]) -> str:
    """A shard's own version of a file of the output folder: ``extraction_failures.shard-3-of-16.csv``."""
    stem, suffix = os.path.splitext(name)
    return f"{stem}.shard-{shard[0]}-of-{shard[1]}{suffix}"


def remove_own_tmp(video_out_dirs: Iterable[str | Path]) -> int:
    """Remove the temporary folders (``.tmp-<video>-<pid>``, any pid, any node) of these videos."""
    removed = 0
    by_folder: dict[Path, set[str]] = {}
    for out_dir in map(Path, video_out_dirs):
        by_folder.setdefault(out_dir.parent, set()).add(f"{TMP_PREFIX}{out_dir.name}-")
    for folder, prefixes in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(TMP_PREFIX) and name.rsplit("-", 1)[0] + "-" in prefixes:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _ray_task(job: Job, opencv_threads: int) -> Result:
    """One video in a Ray worker process: the local workers' function, OpenCV threads set."""
    cv2.setNumThreads(opencv_threads)
    return run_job(job)


def ray_cpus(address: str | None) -> int:
    """CPUs of the Ray cluster (connecting to it, or starting a local instance)."""
    _init_ray(address)
    import ray
    return int(ray.cluster_resources().get("CPU", 1))


def _init_ray(address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install -r requirements-cluster.txt") from None
    if not ray.is_initialized():
        # On a cluster the utils package travels to every node (no shared code folder needed; the
        # data stays on the shared folder); a local instance's workers import it from here.
        runtime_env = {"py_modules": [str(REPO_ROOT / "utils")]} if address else None
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)


def run_ray(jobs: Sequence[Job], address: str | None, opencv_threads: int = 1) -> Iterator[Result]:
    """Extract ``jobs`` as one Ray task each (``opencv_threads`` CPUs per task); results as they finish."""
    _init_ray(address)
    import ray
    task = ray.remote(num_cpus=opencv_threads, max_retries=2)(_ray_task)
    pending = [task.remote(job, opencv_threads) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    except BaseException:
        for ref in pending:          # interrupted: stop the tasks not finished yet
            ray.cancel(ref, force=True)
        raise
