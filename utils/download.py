"""Get HMDB51 or UCF101: download the official archives and unpack them into the repository's data layout.

    python -m utils.download                     # HMDB51: videos (about 2 GB) and split files into data/hmdb51/
    python -m utils.download --splits-only       # only the 153 split files (a few kB)
    python -m utils.download --dataset ucf101    # UCF101: videos (about 6.5 GB) and lists into data/ucf101/
    python -m utils.download --dest DIR          # somewhere else

HMDB51 comes from the Serre lab (Brown University), who publish it under CC BY 4.0:

* ``hmdb51_org.rar``: one RAR archive per class, each holding that class's ``.avi`` clips;
* ``test_train_splits.rar``: the folder ``testTrainMulti_7030_splits/`` with 153 split files.

UCF101 comes from the Center for Research in Computer Vision (University of Central Florida):

* ``UCF101.rar``: one RAR archive holding ``UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.avi`` (13,320 clips);
* ``UCF101TrainTestSplits-RecognitionTask.zip``: ``ucfTrainTestlist/`` with ``classInd.txt``,
  ``trainlist0{1,2,3}.txt`` and ``testlist0{1,2,3}.txt`` (read by :mod:`utils.split_formats`).

Downloads go to ``<dest>/downloads/`` and are **resumable**: bytes arrive in ``<name>.part``
(an interrupted run continues with an HTTP Range request) and the file gets its final name
only when it is complete. Completeness is checked against the size the server announces
(Content-Length / Content-Range), or the size recorded here where a maintained source publishes
one, and the finished file against published checksums: the MD5 sums of torchvision (HMDB51
splits) and DeepMind's ``brave`` (HMDB51 videos), the size and SHA-256 of TensorFlow Datasets
(UCF101 lists). No maintained source publishes a checksum of ``UCF101.rar``: its announced size
is checked, and a broken archive shows when it is unpacked.

Unpacking RAR needs an extractor on the system (Python's standard library cannot read RAR):
``unar``, ``unrar``, ``7z`` or ``bsdtar``; ZIP is read by Python. The result is::

    <dest>/videos/<class>/<video>.avi
    <dest>/splits/<class>_test_split{1,2,3}.txt        (HMDB51)
    <dest>/splits/classInd.txt, trainlist0k.txt, ...   (UCF101)

A class folder appears only once it is fully unpacked, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .config import DATA_DIR
from .writers import FolderNotWritable, check_writable


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str | None = None   # None: not checked
    size: int | None = None  # bytes; None: trust the server's Content-Length
    sha256: str | None = None  # None: not checked


VIDEOS = Archive(
    url="http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
    filename="hmdb51_org.rar",
    md5="517d6f1f19f215c45cdd4d25356be1fb",   # as checked by DeepMind's brave/download_hmdb.py
)
SPLITS = Archive(
    url="http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar",
    filename="test_train_splits.rar",
    md5="15e67781e70dcfbdce2d7dbb9b3344b5",   # as checked by torchvision.datasets.HMDB51
)
DEFAULT_DEST = DATA_DIR / "hmdb51"
EXPECTED_VIDEOS = 6766
UCF101_VIDEOS = Archive(
    url="https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
    filename="UCF101.rar",
)
UCF101_SPLITS = Archive(
    url="https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
    filename="UCF101TrainTestSplits-RecognitionTask.zip",
    size=113943,   # size and SHA-256 as recorded by TensorFlow Datasets (url_checksums/ucf101.txt)
    sha256="5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27",
)
UCF101_DEST = DATA_DIR / "ucf101"
UCF101_EXPECTED_VIDEOS = 13320
UCF101_SPLIT_FILES = ("classInd.txt", *(f"{kind}list{k:02d}.txt" for kind in ("train", "test") for k in (1, 2, 3)))
CHUNK_SIZE = 1 << 20
USER_AGENT = "two-stream-hmdb51-downloader (Python urllib)"

# RAR extractors, in order of preference: (executable, argv builder(archive, out_dir)).
RAR_TOOLS: dict[str, Callable[[str, str], list[str]]] = {
    "unar": lambda a, o: ["unar", "-quiet", "-force-overwrite", "-no-directory", "-output-directory", o, a],
    "unrar": lambda a, o: ["unrar", "x", "-o+", "-idq", "-y", a, o + os.sep],
    "7z": lambda a, o: ["7z", "x", "-y", "-bd", f"-o{o}", a],
    "7zz": lambda a, o: ["7zz", "x", "-y", "-bd", f"-o{o}", a],
    "bsdtar": lambda a, o: ["bsdtar", "-x", "-f", a, "-C", o],
}
INSTALL_HELP = """No RAR extractor found (looked for: {tools}). Python cannot unpack RAR archives on its own.
Install one of them and run the same command again (finished downloads are kept):
  Debian/Ubuntu:  sudo apt-get install unar        (or: sudo apt-get install libarchive-tools  for bsdtar)
  Fedora:         sudo dnf install unar
  macOS:          brew install unar
  Windows:        install 7-Zip from https://www.7-zip.org and add its folder (with 7z.exe) to PATH
  conda:          conda install -c conda-forge libarchive   (provides bsdtar)"""


class DownloadError(RuntimeError):
    """A download that did not produce the announced file."""


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------
def file_digest(path, algorithm: str = "md5", chunk_size: int = CHUNK_SIZE) -> str:
    """Hex digest (``"md5"``, ``"sha256"``, ...) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _total_size(response, offset: int) -> int | None:
    """Full file size from a 206 Content-Range (``bytes a-b/total``) or a 200 Content-Length."""
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", content_range)
        if match:
            return int(match[1])
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return int(length) + (offset if response.status == 206 else 0)
    return None


def _verify(path: Path, size: int | None, md5: str | None, sha256: str | None = None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path}: size mismatch, {actual} bytes on disk but {size} expected")
    for algorithm, published in (("md5", md5), ("sha256", sha256)):
        if published is None:
            continue
        digest = file_digest(path, algorithm)
        if digest != published:
            bad = path.with_name(path.name + ".corrupt")
            os.replace(path, bad)
            raise DownloadError(f"{path}: {algorithm.upper()} {digest} does not match the published "
                                f"{published}; moved to {bad.name}, run again to download it afresh")


def download_file(url: str, dest, *, size: int | None = None, md5: str | None = None,
                  sha256: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if an earlier run was interrupted.

    ``size``: expected bytes (default: what the server announces). ``md5``, ``sha256``: checked
    at the end. An existing ``dest`` is verified and kept. Raises :class:`DownloadError` when the bytes
    received do not add up; an incomplete ``.part`` is kept so the next call resumes it.
    """
    dest = Path(dest)
    if dest.exists():
        _verify(dest, size, md5, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:   # 416: nothing left after `offset`
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
        total = _total_size(error, 0)
        if total is None or total != offset:
            part.unlink()
            raise DownloadError(f"{url}: the server refused to resume {part.name} (HTTP 416); "
                                "removed it, run again to start over") from error
        response = None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: cannot connect ({error.reason}); check the network or the URL") from error

    if response is None:
        total = offset
    else:
        with response:
            if offset and response.status != 206:   # the server ignored Range: start over
                offset = 0
            total = _total_size(response, offset)
            if size is not None and total is not None and total != size:
                raise DownloadError(f"{url}: the server announces {total} bytes, expected {size}")
            total = size if size is not None else total
            with open(part, "ab" if offset else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress,
            ) as bar:
                try:
                    while chunk := response.read(CHUNK_SIZE):
                        out.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(f"{url}: the download broke off after {part.stat().st_size} bytes "
                                        f"({error}); run again to resume from {part}") from error

    received = part.stat().st_size
    if total is not None and received != total:
        if received > total:
            part.unlink()
            raise DownloadError(f"{url}: received {received} bytes, more than the {total} expected; "
                                f"removed {part.name}, run again to start over")
        raise DownloadError(f"{url}: the connection ended after {received} of {total} bytes; "
                            f"run again to resume from {part}")
    os.replace(part, dest)
    _verify(dest, None, md5, sha256)
    return dest


# --------------------------------------------------------------------------------------
# Unpack
# --------------------------------------------------------------------------------------
def find_rar_tool() -> str | None:
    """Name of the first RAR extractor found on PATH, or None."""
    return next((tool for tool in RAR_TOOLS if shutil.which(tool)), None)


def extract_rar(archive, out_dir) -> None:
    """Unpack one RAR archive into ``out_dir`` with the first extractor found on PATH."""
    tool = find_rar_tool()
    if tool is None:
        raise RuntimeError(INSTALL_HELP.format(tools=", ".join(RAR_TOOLS)))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    command = RAR_TOOLS[tool](str(archive), str(out_dir))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{tool} failed on {archive} (exit {result.returncode}):\n"
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")


def _files_below(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffix))


def unpack_splits(archive, dest, extract: Callable = extract_rar) -> Path:
    """``test_train_splits.rar`` -> ``<dest>/splits/*.txt`` (the inner folder is flattened)."""
    dest = Path(dest)
    splits_dir = dest / "splits"
    if splits_dir.is_dir() and any(splits_dir.glob("*_test_split1.txt")):
        return splits_dir
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack_splits_") as tmp:
        tmp = Path(tmp)
        extract(Path(archive), tmp / "raw")
        files = [p for p in _files_below(tmp / "raw", ".txt") if "_test_split" in p.name]
        if not files:
            raise RuntimeError(f"{archive}: no <class>_test_split<k>.txt files inside")
        staging = tmp / "splits"
        staging.mkdir()
        for path in files:
            os.replace(path, staging / path.name)
        os.replace(staging, splits_dir)
    return splits_dir


def unpack_videos(archive, dest, extract: Callable = extract_rar, progress: bool = True) -> Path:
    """``hmdb51_org.rar`` (one ``<class>.rar`` per class) -> ``<dest>/videos/<class>/*.avi``.

    Classes already unpacked are skipped; each class folder appears only when complete.
    """
    dest = Path(dest)
    videos_dir = dest / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack_videos_") as tmp:
        tmp = Path(tmp)
        extract(Path(archive), tmp / "outer")
        class_archives = _files_below(tmp / "outer", ".rar")
        if not class_archives:
            raise RuntimeError(f"{archive}: expected one .rar per class inside, found none")
        for class_archive in tqdm(class_archives, desc="classes", disable=not progress):
            class_name = class_archive.stem
            target = videos_dir / class_name
            if target.is_dir():
                continue
            inner = tmp / "inner" / class_name
            extract(class_archive, inner)
            staging = tmp / "staging" / class_name
            staging.mkdir(parents=True)
            for video in _files_below(inner, ".avi"):
                os.replace(video, staging / video.name)
            os.replace(staging, target)
            shutil.rmtree(inner)
            class_archive.unlink()
    return videos_dir


def unpack_ucf101_splits(archive, dest) -> Path:
    """``UCF101TrainTestSplits-RecognitionTask.zip`` -> ``<dest>/splits/`` (classInd.txt, train/test lists)."""
    dest = Path(dest)
    splits_dir = dest / "splits"
    if all((splits_dir / name).is_file() for name in UCF101_SPLIT_FILES):
        return splits_dir
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack_splits_") as tmp:
        staging = Path(tmp) / "splits"
        staging.mkdir()
        with zipfile.ZipFile(archive) as z:
            members = {Path(info.filename).name: info for info in z.infolist() if not info.is_dir()}
            missing = [name for name in UCF101_SPLIT_FILES if name not in members]
            if missing:
                raise RuntimeError(f"{archive}: {', '.join(missing)} not inside")
            for name in UCF101_SPLIT_FILES:
                (staging / name).write_bytes(z.read(members[name]))
        splits_dir.mkdir(exist_ok=True)
        for name in UCF101_SPLIT_FILES:
            os.replace(staging / name, splits_dir / name)
    return splits_dir


def unpack_ucf101_videos(archive, dest, extract: Callable = extract_rar, progress: bool = True) -> Path:
    """``UCF101.rar`` (``UCF-101/<Class>/*.avi``) -> ``<dest>/videos/<Class>/*.avi``.

    Skipped when every class of ``<dest>/splits/classInd.txt`` is already there; otherwise the
    archive is unpacked and the missing classes are moved in, each folder only when complete.
    """
    from .split_formats import read_class_index

    dest = Path(dest)
    videos_dir = dest / "videos"
    class_index = dest / "splits" / "classInd.txt"
    if class_index.is_file() and all((videos_dir / c).is_dir() for c in read_class_index(class_index)):
        return videos_dir
    videos_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack_videos_") as tmp:
        tmp = Path(tmp)
        extract(Path(archive), tmp / "raw")
        by_class: dict[str, list[Path]] = {}
        for video in _files_below(tmp / "raw", ".avi"):
            by_class.setdefault(video.parent.name, []).append(video)
        if not by_class:
            raise RuntimeError(f"{archive}: no .avi files inside")
        for class_name, videos in tqdm(sorted(by_class.items()), desc="classes", disable=not progress):
            target = videos_dir / class_name
            if target.is_dir():
                continue
            staging = tmp / "staging" / class_name
            staging.mkdir(parents=True)
            for video in videos:
                os.replace(video, staging / video.name)
            os.replace(staging, target)
    return videos_dir


def download_ucf101(dest=UCF101_DEST, splits_only: bool = False, remove_archives: bool = False,
                    extract: Callable | None = None, progress: bool = True) -> Path:
    """Download and unpack UCF101 into ``dest`` (default ``data/ucf101``); returns ``dest``.

    The lists (a ZIP) need nothing but Python; the videos need a RAR extractor, checked before
    the 6.5 GB download.
    """
    dest = Path(dest)
    if extract is None and not splits_only:
        if find_rar_tool() is None:
            raise RuntimeError(INSTALL_HELP.format(tools=", ".join(RAR_TOOLS)))
        extract = extract_rar
    downloads = dest / "downloads"
    archives = [UCF101_SPLITS] if splits_only else [UCF101_SPLITS, UCF101_VIDEOS]
    paths = {a.filename: download_file(a.url, downloads / a.filename, size=a.size, md5=a.md5,
                                       sha256=a.sha256, progress=progress) for a in archives}
    unpack_ucf101_splits(paths[UCF101_SPLITS.filename], dest)
    if not splits_only:
        unpack_ucf101_videos(paths[UCF101_VIDEOS.filename], dest, extract, progress=progress)
    if remove_archives:
        for path in paths.values():
            path.unlink()
    return dest


def download_hmdb51(dest=DEFAULT_DEST, splits_only: bool = False, remove_archives: bool = False,
                    extract: Callable | None = None, progress: bool = True) -> Path:
    """Download and unpack HMDB51 into ``dest`` (default ``data/hmdb51``); returns ``dest``.

    Fails early, before the 2 GB download, when no RAR extractor is installed.
    """
    dest = Path(dest)
    if extract is None:
        if find_rar_tool() is None:
            raise RuntimeError(INSTALL_HELP.format(tools=", ".join(RAR_TOOLS)))
        extract = extract_rar
    downloads = dest / "downloads"
    archives = [SPLITS] if splits_only else [SPLITS, VIDEOS]
    paths = {a.filename: download_file(a.url, downloads / a.filename, size=a.size, md5=a.md5,
                                       progress=progress) for a in archives}
    unpack_splits(paths[SPLITS.filename], dest, extract)
    if not splits_only:
        unpack_videos(paths[VIDEOS.filename], dest, extract, progress=progress)
    if remove_archives:
        for path in paths.values():
            path.unlink()
    return dest


def check_destination(dest) -> None:
    """OSError naming ``dest`` unless it is, or can be made, a folder this user can write into."""
    try:
        check_writable(dest)
    except FolderNotWritable as error:
        advice = ("give --dest a folder (it gets videos/, splits/ and downloads/)" if error.errno == errno.ENOTDIR
                  else "fix its permissions or give --dest a folder you can write into")
        raise OSError(f"{error}; {advice}") from None


DATASETS = {
    "hmdb51": (download_hmdb51, DEFAULT_DEST, EXPECTED_VIDEOS),
    "ucf101": (download_ucf101, UCF101_DEST, UCF101_EXPECTED_VIDEOS),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.download", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hmdb51",
                        help="which dataset (default: hmdb51)")
    parser.add_argument("--dest", type=Path, help="dataset folder (default: data/<dataset>)")
    parser.add_argument("--splits-only", action="store_true", help="only the split files")
    parser.add_argument("--remove-archives", action="store_true",
                        help="delete the downloaded archives after unpacking")
    args = parser.parse_args(argv)
    download, default_dest, expected = DATASETS[args.dataset]
    try:
        check_destination(args.dest or default_dest)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        dest = download(args.dest or default_dest, splits_only=args.splits_only,
                        remove_archives=args.remove_archives)
    except (DownloadError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:        # the disk filled up, a folder became unwritable, ...
        where = error.filename or args.dest or default_dest
        print(f"error: {where}: {error.strerror or error}; free some space or fix the folder, then run the same "
              f"command again (the download resumes)", file=sys.stderr)
        return 2
    n_splits = sum(1 for p in (dest / "splits").iterdir() if p.suffix == ".txt")
    n_videos = sum(1 for _ in (dest / "videos").glob("*/*.avi")) if not args.splits_only else 0
    print(f"{dest}: {n_splits} split files" + ("" if args.splits_only else
                                              f", {n_videos} videos ({args.dataset.upper()} has {expected})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
