"""Downloads: resumed where they stopped, checked against published checksums, one line when offline; the
translation data from the hub's parquet files (no network here: a local HTTP server and a stand-in hub)."""

import hashlib
import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.core.data.download import Offline, fetch, is_network_error
from experiments.core.errors import MissingData

CONTENT = bytes(range(256)) * 400  # 100 kB


class RangeHandler(http.server.BaseHTTPRequestHandler):
    ranges: list = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        start = 0
        header = self.headers.get("Range")
        RangeHandler.ranges.append(header)
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(CONTENT) - start))
        self.end_headers()
        self.wfile.write(CONTENT[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_an_interrupted_download_resumes_where_it_stopped_and_is_checked(server, tmp_path):
    dest = tmp_path / "data.tar.gz"
    (tmp_path / "data.tar.gz.part").write_bytes(CONTENT[:30000])  # what an interrupted run left
    md5 = hashlib.md5(CONTENT).hexdigest()
    assert fetch(f"{server}/data.tar.gz", dest, "make data-x", {"md5": md5}) == dest
    assert dest.read_bytes() == CONTENT and not (tmp_path / "data.tar.gz.part").exists()
    assert RangeHandler.ranges == ["bytes=30000-"]  # only the missing part was asked for
    fetch(f"{server}/data.tar.gz", dest, "make data-x", {"md5": md5})  # there already: no request
    assert len(RangeHandler.ranges) == 1


def test_a_checksum_mismatch_removes_the_download_and_says_to_rerun(server, tmp_path):
    with pytest.raises(MissingData, match=r"md5 of the download is .*, the published one 0+; the file was removed, "
                                          r"rerun `make data-x`"):
        fetch(f"{server}/data.tar.gz", tmp_path / "data.tar.gz", "make data-x", {"md5": "0" * 32})
    assert not list(tmp_path.iterdir())


def test_offline_is_one_line_naming_the_target(tmp_path):
    with pytest.raises(Offline) as caught:
        fetch("http://127.0.0.1:9/nothing-listens-here.zip", tmp_path / "a.zip", "make data-retrieval", what="COCO")
    message = str(caught.value)
    assert "\n" not in message and "cannot download COCO" in message and "rerun `make data-retrieval`" in message


def _hub(monkeypatch, tmp_path, files: dict, sha=None, fail=None):
    """A stand-in for the Hugging Face hub: {path in repo: rows} served as parquet files in the hub's schema;
    hf_hub_download copies one into its local_dir as the client does. Returns the calls made of it."""
    import shutil

    import huggingface_hub

    from experiments.translation.data import write_parquet

    served, entries = {}, []
    for path, rows in files.items():
        out = tmp_path / "hub" / path.replace("/", "_")
        write_parquet([{"translation": r} for r in rows], out)
        served[path] = out
        digest = sha or hashlib.sha256(out.read_bytes()).hexdigest()
        entries.append(SimpleNamespace(path=path, lfs=SimpleNamespace(sha256=digest)))
    asked = []

    def list_repo_tree(self, repo, folder, repo_type=None):
        if fail:
            raise fail
        asked.append(("list", repo, folder, repo_type))
        return [e for e in entries if e.path.startswith(folder)]

    def hf_hub_download(repo, path, repo_type=None, local_dir=None):
        asked.append(("download", repo, path, repo_type))
        dest = Path(local_dir) / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(served[path], dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return asked


def test_translation_splits_come_from_the_hubs_parquet_files(monkeypatch, tmp_path):
    from experiments.translation.data import read_text, sentences
    from experiments.translation.prepare import HUB_REPOS, fetch_split

    assert set(HUB_REPOS.values()) == {"wmt/wmt14", "wmt/wmt17"}  # no script-era names
    rows = [{"de": "ein haus.", "en": "a house."}, {"de": "ja.", "en": "yes."}]
    asked = _hub(monkeypatch, tmp_path, {"de-en/test-00000-of-00001.parquet": rows[:1],
                                         "de-en/train-00000-of-00002.parquet": rows,
                                         "de-en/train-00001-of-00002.parquet": rows[1:]})
    files = fetch_split(tmp_path, "wmt14/de-en/train-*.parquet", "make data-translation")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "wmt14/de-en/train-00000-of-00002.parquet", "wmt14/de-en/train-00001-of-00002.parquet"]  # the test file left
    text = read_text(tmp_path, "wmt14/de-en/train-*.parquet", "en", "de")
    assert sentences(text, "en", "de", "train") == (["a house.", "yes.", "yes."], ["ein haus.", "ja.", "ja."])
    assert asked == [("list", "wmt/wmt14", "de-en", "dataset"),
                     *(("download", "wmt/wmt14", f"de-en/train-0000{i}-of-00002.parquet", "dataset") for i in (0, 1))]
    # verified once: fetching again asks nothing of the hub (so preparing again works offline)
    assert fetch_split(tmp_path, "wmt14/de-en/train-*.parquet", "make data-translation") == files
    assert len(asked) == 3


def test_translation_download_checks_the_published_sha256(monkeypatch, tmp_path):
    from experiments.translation.prepare import fetch_split

    _hub(monkeypatch, tmp_path, {"de-en/test-00000-of-00001.parquet": [{"de": "a", "en": "b"}]}, sha="f" * 64)
    with pytest.raises(MissingData, match="sha256 of the download is .*rerun `make data-translation`"):
        fetch_split(tmp_path, "wmt17/de-en/test-*.parquet", "make data-translation")
    assert not list((tmp_path / "wmt17").rglob("*.parquet"))  # removed: the rerun downloads it again
    assert not (tmp_path / "wmt17" / ".verified.json").exists()


def test_translation_download_offline_is_one_line(monkeypatch, tmp_path):
    from experiments.translation.prepare import fetch_split

    _hub(monkeypatch, tmp_path, {}, fail=ConnectionError("[Errno -2] Name or service not known"))
    with pytest.raises(Offline, match=r"cannot download wmt/wmt14 de-en/train-\*.parquet: huggingface.co is not "
                                      r"reachable .*rerun `make data-translation`"):
        fetch_split(tmp_path, "wmt14/de-en/train-*.parquet", "make data-translation")


def test_network_errors_are_told_apart_from_other_errors():
    class ConnectError(Exception):
        pass

    ConnectError.__module__ = "httpx"
    assert is_network_error(ConnectError("no route")) and is_network_error(TimeoutError())
    assert not is_network_error(ValueError("bad parquet"))


def test_reading_download_offline_is_one_line(monkeypatch, tmp_path):
    import urllib.error

    import gdown

    from experiments.reading.task import ReadingTask

    class ConnectionError(Exception):  # noqa: A001 - as requests names it
        pass

    ConnectionError.__module__ = "requests.exceptions"

    def unreachable(*args, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='drive.google.com'): Max retries exceeded") from \
            urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(gdown, "download", unreachable)
    with pytest.raises(Offline, match=r"cannot download the cnn questions: drive.google.com is not reachable .*"
                                      r"rerun `make data-reading`"):
        ReadingTask._download("cnn", tmp_path / "cnn.tgz", "make data-reading")
    assert not (tmp_path / "cnn.tgz").exists()
