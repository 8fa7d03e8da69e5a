"""Tests for utils/download.py against a local HTTP server (127.0.0.1) that supports Range requests.

RAR archives cannot be made here, so unpacking is tested with a fake extractor that reads ZIP
files (and, where unar/7z/bsdtar is installed, with the real tool, which also reads ZIP).
"""
import hashlib
import http.server
import re
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from utils import dataset, download
from utils.config import Config

SPLITS_FIXTURE = Path(__file__).resolve().parent / "data" / "hmdb51_splits"
PAYLOAD = bytes(range(256)) * 4000 + b"tail"   # ~1 MB, not a multiple of the chunk size


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes); honours ``Range: bytes=N-`` unless told not to."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.honour_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:   # simulate a dropped connection
            body = body[: server.cut_after]
            server.cut_after = None
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.requests, httpd.honour_range, httpd.cut_after = {}, [], True, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def md5(data):
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- download
def test_full_download(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    dest = download.download_file(server.url + "/a.rar", tmp_path / "a.rar", md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.rar.part").exists()
    assert server.requests == [("/a.rar", None)]
    # a finished file is verified and kept, not fetched again
    download.download_file(server.url + "/a.rar", dest, md5=md5(PAYLOAD), progress=False)
    assert len(server.requests) == 1


def test_resume_from_partial_file(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    (tmp_path / "a.rar.part").write_bytes(PAYLOAD[:300_001])
    dest = download.download_file(server.url + "/a.rar", tmp_path / "a.rar", progress=False)
    assert server.requests == [("/a.rar", "bytes=300001-")]
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.rar.part").exists()


def test_restart_when_server_ignores_range(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "a.rar.part").write_bytes(b"stale bytes")
    dest = download.download_file(server.url + "/a.rar", tmp_path / "a.rar", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    (tmp_path / "a.rar.part").write_bytes(PAYLOAD)   # server answers 416: nothing left
    dest = download.download_file(server.url + "/a.rar", tmp_path / "a.rar", md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_keeps_part_then_resumes(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    server.cut_after = 123_456
    with pytest.raises(download.DownloadError, match=rf"after 123456 of {len(PAYLOAD)} bytes.*resume"):
        download.download_file(server.url + "/a.rar", tmp_path / "a.rar", progress=False)
    assert not (tmp_path / "a.rar").exists()
    assert (tmp_path / "a.rar.part").stat().st_size == 123_456
    dest = download.download_file(server.url + "/a.rar", tmp_path / "a.rar", progress=False)
    assert server.requests[-1] == ("/a.rar", "bytes=123456-")
    assert dest.read_bytes() == PAYLOAD


def test_size_mismatch_is_an_error(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    with pytest.raises(download.DownloadError, match=rf"announces {len(PAYLOAD)} bytes, expected 1000"):
        download.download_file(server.url + "/a.rar", tmp_path / "a.rar", size=1000, progress=False)
    assert not (tmp_path / "a.rar").exists()
    (tmp_path / "b.rar").write_bytes(b"short")
    with pytest.raises(download.DownloadError, match="size mismatch, 5 bytes on disk but 1000 expected"):
        download.download_file(server.url + "/a.rar", tmp_path / "b.rar", size=1000, progress=False)


def test_md5_mismatch_moves_file_aside(server, tmp_path):
    server.files["/a.rar"] = PAYLOAD
    with pytest.raises(download.DownloadError, match="does not match the published"):
        download.download_file(server.url + "/a.rar", tmp_path / "a.rar", md5="0" * 32, progress=False)
    assert not (tmp_path / "a.rar").exists()
    assert (tmp_path / "a.rar.corrupt").read_bytes() == PAYLOAD


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.download_file(server.url + "/nothing.rar", tmp_path / "x.rar", progress=False)


# ---------------------------------------------------------------- unpack
def test_no_extractor_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    assert download.find_rar_tool() is None
    with pytest.raises(RuntimeError) as error:
        download.extract_rar(tmp_path / "a.rar", tmp_path / "out")
    message = str(error.value)
    for hint in ("sudo apt-get install unar", "brew install unar", "7-Zip", "unrar", "bsdtar"):
        assert hint in message

    def no_download(*args, **kwargs):
        raise AssertionError("must fail before downloading")

    monkeypatch.setattr(download, "download_file", no_download)
    with pytest.raises(RuntimeError, match="No RAR extractor found"):
        download.download_hmdb51(tmp_path / "hmdb51", progress=False)
    assert download.main(["--dest", str(tmp_path / "hmdb51")]) == 1


def zip_extract(archive, out_dir):
    """Fake RAR extractor for the tests: the 'rar' files here are ZIP files."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(out_dir)


SAMPLE = {
    "climb": ["(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_2.avi"],
    "golf": ["Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi"],
    "brush_hair": ["Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0.avi",
                   "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"],
}


def make_fake_archives(folder: Path):
    """Zip files shaped like hmdb51_org.rar (one archive per class) and test_train_splits.rar."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "hmdb51_org.rar", "w") as outer:
        for class_name, names in SAMPLE.items():
            inner_path = folder / f"{class_name}.rar"
            with zipfile.ZipFile(inner_path, "w") as inner:
                for name in names:
                    inner.writestr(f"{class_name}/{name}", name.encode())
            outer.write(inner_path, inner_path.name)
            inner_path.unlink()
    with zipfile.ZipFile(folder / "test_train_splits.rar", "w") as splits:
        for path in sorted(SPLITS_FIXTURE.glob("*.txt")):
            splits.write(path, f"testTrainMulti_7030_splits/{path.name}")
    return folder / "hmdb51_org.rar", folder / "test_train_splits.rar"


def check_layout(dest: Path):
    assert len(list((dest / "splits").glob("*_test_split*.txt"))) == 153
    assert not (dest / "splits" / "testTrainMulti_7030_splits").exists()
    for class_name, names in SAMPLE.items():
        assert sorted(p.name for p in (dest / "videos" / class_name).iterdir()) == sorted(names)
    assert not list(dest.glob(".unpack_*"))


def test_unpack_with_fake_extractor(tmp_path):
    videos_rar, splits_rar = make_fake_archives(tmp_path / "archives")
    dest = tmp_path / "hmdb51"
    download.unpack_splits(splits_rar, dest, extract=zip_extract)
    download.unpack_videos(videos_rar, dest, extract=zip_extract, progress=False)
    check_layout(dest)
    # resumable: a finished class is skipped, a missing one is unpacked again
    (dest / "videos" / "golf" / SAMPLE["golf"][0]).unlink()
    (dest / "videos" / "golf").rmdir()
    calls = []
    download.unpack_videos(videos_rar, dest, extract=lambda a, o: (calls.append(Path(a).name), zip_extract(a, o)),
                           progress=False)
    assert calls == ["hmdb51_org.rar", "golf.rar"]
    check_layout(dest)


def test_download_hmdb51_end_to_end(server, tmp_path, monkeypatch):
    videos_rar, splits_rar = make_fake_archives(tmp_path / "archives")
    for archive, path in ((download.VIDEOS, videos_rar), (download.SPLITS, splits_rar)):
        server.files["/" + path.name] = path.read_bytes()
        monkeypatch.setattr(download, "VIDEOS" if archive is download.VIDEOS else "SPLITS",
                            download.Archive(server.url + "/" + path.name, path.name, md5(path.read_bytes())))
    dest = tmp_path / "hmdb51"
    download.download_hmdb51(dest, extract=zip_extract, progress=False)
    check_layout(dest)
    assert (dest / "downloads" / "hmdb51_org.rar").is_file()
    table = dataset.load_splits(dest / "splits")   # the official files, 70/30 checked
    assert len(table) == 6766
    # the CLI, with a fake extractor standing in for the system tool
    monkeypatch.setattr(download, "find_rar_tool", lambda: "fake")
    monkeypatch.setattr(download, "extract_rar", zip_extract)
    assert download.main(["--dest", str(tmp_path / "cli"), "--splits-only", "--remove-archives"]) == 0
    assert len(list((tmp_path / "cli" / "splits").glob("*.txt"))) == 153
    assert not (tmp_path / "cli" / "videos").exists()
    assert not list((tmp_path / "cli" / "downloads").iterdir())


@pytest.mark.skipif(download.find_rar_tool() in (None, "unrar"),
                    reason="needs unar, 7z or bsdtar (they also read ZIP files)")
def test_unpack_with_system_extractor(tmp_path):
    videos_rar, splits_rar = make_fake_archives(tmp_path / "archives")
    dest = tmp_path / "hmdb51"
    download.unpack_splits(splits_rar, dest)
    download.unpack_videos(videos_rar, dest, progress=False)
    check_layout(dest)


# ---------------------------------------------------------------- UCF101
UCF101_SPLITS_FIXTURE = Path(__file__).resolve().parent / "data" / "ucf101_splits"
UCF101_SAMPLE = {"ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g08_c02.avi"],
                 "HandstandPushups": ["v_HandStandPushups_g08_c01.avi"], "YoYo": ["v_YoYo_g25_c05.avi"]}


def make_fake_ucf101_archives(folder: Path):
    """A ZIP shaped like UCF101.rar (``UCF-101/<Class>/*.avi``) and the real lists zipped as the official zip."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "UCF101.rar", "w") as videos:
        for class_name, names in UCF101_SAMPLE.items():
            for name in names:
                videos.writestr(f"UCF-101/{class_name}/{name}", name.encode())
    with zipfile.ZipFile(folder / "UCF101TrainTestSplits-RecognitionTask.zip", "w") as splits:
        for path in sorted(UCF101_SPLITS_FIXTURE.glob("*.txt")):
            splits.write(path, f"ucfTrainTestlist/{path.name}")
    return folder / "UCF101.rar", folder / "UCF101TrainTestSplits-RecognitionTask.zip"


def serve_ucf101(server, monkeypatch, tmp_path, splits_sha256=None):
    """Serve fake UCF101 archives and point download.UCF101_* at them (sizes and SHA-256 recorded)."""
    for name, path in zip(("UCF101_VIDEOS", "UCF101_SPLITS"), make_fake_ucf101_archives(tmp_path / "archives")):
        data = path.read_bytes()
        server.files["/" + path.name] = data
        digest = splits_sha256 if name == "UCF101_SPLITS" and splits_sha256 else hashlib.sha256(data).hexdigest()
        monkeypatch.setattr(download, name, download.Archive(server.url + "/" + path.name, path.name,
                                                             size=len(data), sha256=digest))


def check_ucf101_layout(dest: Path):
    assert sorted(p.name for p in (dest / "splits").iterdir()) == sorted(p.name for p in UCF101_SPLITS_FIXTURE.iterdir())
    for class_name, names in UCF101_SAMPLE.items():
        assert sorted(p.name for p in (dest / "videos" / class_name).iterdir()) == sorted(names)
    assert not list(dest.glob(".unpack_*"))


def test_download_ucf101_end_to_end(server, tmp_path, monkeypatch):
    serve_ucf101(server, monkeypatch, tmp_path)
    dest = tmp_path / "ucf101"
    download.download_ucf101(dest, extract=zip_extract, progress=False)
    check_ucf101_layout(dest)
    table = dataset.load_splits(dest / "splits")       # the official lists, as unpacked
    assert len(table) == 13320 and table["split1"].value_counts()["train"] == 9537
    # a partial copy (3 classes of 101): the index counts the missing clips
    with pytest.warns(UserWarning, match="13316 of 13320 videos listed"):
        index = dataset.build_index(Config(dataset=str(dest)))
    assert index["has_video"].sum() == 4
    # resumable: a finished class is kept, a missing one is unpacked again
    shutil.rmtree(dest / "videos" / "YoYo")
    kept = (dest / "videos" / "ApplyEyeMakeup").stat().st_ino
    download.unpack_ucf101_videos(dest / "downloads" / "UCF101.rar", dest, extract=zip_extract, progress=False)
    check_ucf101_layout(dest)
    assert (dest / "videos" / "ApplyEyeMakeup").stat().st_ino == kept


def test_ucf101_videos_skipped_when_every_class_is_there(tmp_path):
    dest = tmp_path / "ucf101"
    shutil.copytree(UCF101_SPLITS_FIXTURE, dest / "splits")
    for class_name in dataset.class_names(dest / "splits"):
        (dest / "videos" / class_name).mkdir(parents=True)

    def no_extract(*args):
        raise AssertionError("nothing to unpack")

    download.unpack_ucf101_videos(tmp_path / "UCF101.rar", dest, extract=no_extract, progress=False)


def test_ucf101_sha256_mismatch_moves_file_aside(server, tmp_path, monkeypatch):
    serve_ucf101(server, monkeypatch, tmp_path, splits_sha256="0" * 64)
    with pytest.raises(download.DownloadError, match="SHA256 .* does not match the published 0000"):
        download.download_ucf101(tmp_path / "ucf101", splits_only=True, progress=False)
    assert (tmp_path / "ucf101" / "downloads" / "UCF101TrainTestSplits-RecognitionTask.zip.corrupt").is_file()


def test_ucf101_cli_splits_need_no_rar_tool(server, tmp_path, monkeypatch, capsys):
    serve_ucf101(server, monkeypatch, tmp_path)
    monkeypatch.setattr(download.shutil, "which", lambda name: None)
    dest = tmp_path / "cli"
    assert download.main(["--dataset", "ucf101", "--dest", str(dest), "--splits-only"]) == 0
    assert "7 split files" in capsys.readouterr().out
    assert len(dataset.load_splits(dest / "splits")) == 13320
    # the videos need a RAR tool: refused before the download
    assert download.main(["--dataset", "ucf101", "--dest", str(tmp_path / "full")]) == 1
    assert "No RAR extractor found" in capsys.readouterr().err
    assert not (tmp_path / "full" / "downloads" / "UCF101.rar").exists()

