"""utils.extract_cluster: --shard K/N (array jobs) and --ray (one Ray task per video)."""
import os
from pathlib import Path

import pytest
from test_extract import write_video

from utils import extract_cluster as cluster
from utils.extract import extract_dataset, main
from utils.extract_job import list_videos
from utils.rawframes import FAILURES_FILE


@pytest.fixture
def videos(tmp_path):
    """Five 96x72 videos in two classes (4 to 6 frames) and one empty file."""
    root = tmp_path / "videos"
    for k, n in enumerate((5, 4, 6, 5, 4)):
        write_video(root / ("jump" if k % 2 else "sit") / f"v{k}.avi", n, seed=k)
    (root / "sit" / "broken.avi").write_bytes(b"")
    return root


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


def test_shards_split_the_list_deterministically(videos):
    paths = list_videos(videos)
    shards = [cluster.shard_videos(paths, (k, 3), videos) for k in (1, 2, 3)]
    assert sorted(p for s in shards for p in s) == sorted(paths)                    # complete ...
    assert sum(len(s) for s in shards) == len(paths) and {len(s) for s in shards} == {2}   # ... disjoint, even
    assert cluster.shard_videos(list(reversed(paths)), (2, 3), videos) == shards[1]  # whatever the order given
    assert cluster.parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "3", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            cluster.parse_shard(bad)


def test_shard_runs_add_up_to_one_run_and_keep_to_their_videos(videos, tmp_path):
    whole = extract_dataset(videos, tmp_path / "whole", "dis-fast", workers=1, progress=False)
    out = tmp_path / "sharded"
    # Shard 2's unfinished video from another node (a pid that means nothing here) must survive shard 1.
    other = cluster.shard_videos(list_videos(videos), (2, 2), videos)[0]
    foreign = out / other.parent.name / f".tmp-{other.stem}-999999999"
    own = cluster.shard_videos(list_videos(videos), (1, 2), videos)[0]
    own_stale = out / own.parent.name / f".tmp-{own.stem}-1"                       # pid 1 is alive: still ours
    for folder in (foreign, own_stale):
        folder.mkdir(parents=True)
    first = extract_dataset(videos, out, "dis-fast", workers=1, progress=False, shard=(1, 2))
    assert foreign.is_dir() and not own_stale.exists()
    second = extract_dataset(videos, out, "dis-fast", workers=1, progress=False, shard=(2, 2))
    assert not foreign.exists()
    assert first.done + second.done == whole.done == 5 and first.failed + second.failed == whole.failed == 1
    assert _tree(out) == _tree(tmp_path / "whole")
    assert not (out / FAILURES_FILE).exists()
    shard_files = sorted(p.name for p in out.glob("extraction_failures.shard-*-of-2.csv"))
    assert shard_files == ["extraction_failures.shard-1-of-2.csv", "extraction_failures.shard-2-of-2.csv"]
    assert sum("broken.avi" in (out / name).read_text() for name in shard_files) == 1
    # The final run without --shard only writes the common failures file.
    final = extract_dataset(videos, out, "dis-fast", workers=1, progress=False)
    assert (final.done, final.skipped, final.failed) == (0, 5, 1)
    assert (out / FAILURES_FILE).read_text() == (tmp_path / "whole" / FAILURES_FILE).read_text()


def test_cli_shard_and_ray_errors(videos, tmp_path, capsys):
    assert main(["--videos", str(videos), "--out", str(tmp_path / "o"), "--method", "dis-fast", "--workers", "1",
                 "--shard", "1/2", "--no-progress"]) == 1                          # one shard holds the empty file
    with pytest.raises(SystemExit) as stop:
        main(["--videos", str(videos), "--out", str(tmp_path / "o"), "--shard", "3/2"])
    assert stop.value.code == 2 and "K must be between 1 and N" in capsys.readouterr().err
    assert main(["--videos", str(videos), "--out", str(tmp_path / "k"), "--method", "tvl1-keras", "--ray"]) == 2
    assert "--shard K/N instead" in capsys.readouterr().err


@pytest.mark.slow
def test_local_ray_run_writes_what_the_process_pool_writes(videos, tmp_path):
    pytest.importorskip("ray", reason="Ray is optional (requirements-cluster.txt); CI installs it")
    import ray
    pool = extract_dataset(videos, tmp_path / "pool", "dis-fast", workers=2, progress=False)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        with_ray = extract_dataset(videos, tmp_path / "ray", "dis-fast", progress=False, ray_address="")
        again = extract_dataset(videos, tmp_path / "ray", "dis-fast", progress=False, ray_address="")
    finally:
        ray.shutdown()
    assert (with_ray.done, with_ray.failed, with_ray.frame_pairs) == (pool.done, pool.failed, pool.frame_pairs)
    assert with_ray.workers >= 1 and (again.done, again.skipped) == (0, 5)
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "pool")
    assert (tmp_path / "ray" / FAILURES_FILE).read_text() == (tmp_path / "pool" / FAILURES_FILE).read_text()
    assert not list((tmp_path / "ray").rglob(".tmp-*"))
