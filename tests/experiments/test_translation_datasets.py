"""The translation data path through Hugging Face `datasets`: the demo's ids are those of the JSON-lines path it
replaced, a second prepare is a cache hit, the WMT splits in the hub's parquet format prepare and train offline,
and a damaged parquet file is one line with nothing half-written."""

import hashlib
import json
from pathlib import Path

import pytest

from experiments.core.errors import MissingData
from experiments.translation import data as D
from tests.conftest import prepare, run_script

FIXTURE = Path(__file__).parent / "fixtures" / "translation_demo_ids.json"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}


def _ragged_sha(r) -> str:
    data = r.flat.numpy().astype("<i4").tobytes() + r.offsets.numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def _text_sha(strings) -> str:
    return hashlib.sha256("\n".join(strings).encode()).hexdigest()


def test_the_demos_ids_are_those_of_the_json_lines_path(tmp_path):
    """The demo's corpus, BPE pieces, ids and references, prepared through `datasets`, hash to what the JSON-lines
    code (commit 156216c) prepared: the models see the same tokens and batches, so `make demo` scores hold."""
    want = json.loads(FIXTURE.read_text())
    # the demo's corpus as that commit generated it: 200 test sentences (the demo has scored 600 since)
    root = prepare(["task=translation", "preset=demo", f"data_dir={tmp_path}", "task.synthetic.sizes.test=200"])
    sp = D.load_bpe(root / "bpe.model")
    assert _text_sha(sp.id_to_piece(i) for i in range(sp.get_piece_size())) == want["pieces"]
    for split, expected in want["splits"].items():
        name = f"{split}.parquet"
        sources, targets = D.sentences(D.read_text(root, name, "en", "de"), "en", "de", name)
        enc = D.load_encoded(root, name, sp, "en", "de", None, "-")
        got = {"pairs": len(enc), "text": _text_sha(f"{s}\t{t}" for s, t in zip(sources, targets, strict=True)),
               "src": _ragged_sha(enc.src), "tgt": _ragged_sha(enc.tgt),
               "refs": None if enc.refs is None else _text_sha(enc.refs)}
        assert got == expected, split


def _files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_a_second_prepare_is_a_cache_hit(tmp_path, monkeypatch):
    overrides = ["task=translation", "preset=smoke", f"data_dir={tmp_path}"]
    root = prepare(overrides)
    before = _files(root)
    assert any(p.suffix == ".arrow" and p.name.startswith("cache-") for p in before)  # the map's tables
    calls = []
    real = D.BatchEncoder.__call__
    monkeypatch.setattr(D.BatchEncoder, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    prepare(overrides)
    assert calls == [] and _files(root) == before  # nothing encoded, read or written again


def _stand_in_hub(monkeypatch, tmp_path) -> list:
    """wmt/wmt14 and wmt/wmt17 as the hub lays them out, in its parquet schema, with generated WMT-shaped pairs:
    HfApi.list_repo_tree and hf_hub_download replaced (no network in tests). Returns the calls made of it."""
    import random
    import shutil
    from types import SimpleNamespace

    import huggingface_hub

    from experiments.translation.synthetic import Lexicon, make_pair
    from tests.experiments.test_translation import smoke_generator

    gen = smoke_generator({})
    lex, rng = Lexicon(dict(gen.lexicon), gen.zipf, 1), random.Random(1)
    layout = {"wmt/wmt14": {"de-en/train-00000-of-00002.parquet": 150, "de-en/train-00001-of-00002.parquet": 150,
                            "de-en/validation-00000-of-00001.parquet": 10, "de-en/test-00000-of-00001.parquet": 10},
              "wmt/wmt17": {"de-en/train-00000-of-00001.parquet": 5, "de-en/test-00000-of-00001.parquet": 12}}
    served, entries = {}, {}
    for repo, files in layout.items():
        for path, n in files.items():
            out = tmp_path / "hub" / repo / path
            D.write_parquet([make_pair(rng, lex, gen.compound, gen.clauses) for _ in range(n)], out)
            served[repo, path] = out
            sha = hashlib.sha256(out.read_bytes()).hexdigest()
            entries.setdefault(repo, []).append(SimpleNamespace(path=path, lfs=SimpleNamespace(sha256=sha)))
    asked = []

    def list_repo_tree(self, repo, folder, repo_type=None):
        asked.append(("list", repo, folder))
        return [e for e in entries[repo] if e.path.startswith(folder)]

    def hf_hub_download(repo, path, repo_type=None, local_dir=None):
        asked.append(("download", repo, path))
        dest = Path(local_dir) / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(served[repo, path], dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return asked


PAPER_SMALL = ["task=translation", "preset=paper", "task.bpe_vocab_size=100"]


@pytest.fixture
def wmt_dir(monkeypatch, tmp_path):
    """A data_dir that `make data-translation` filled from the (stand-in) hub: only the files each split needs."""
    asked = _stand_in_hub(monkeypatch, tmp_path)
    data = tmp_path / "data"
    prepare([*PAPER_SMALL, f"data_dir={data}"])
    downloads = sorted(f"{repo}/{path}" for kind, repo, path in asked if kind == "download")
    assert downloads == ["wmt/wmt14/de-en/test-00000-of-00001.parquet", "wmt/wmt14/de-en/train-00000-of-00002.parquet",
                         "wmt/wmt14/de-en/train-00001-of-00002.parquet",
                         "wmt/wmt14/de-en/validation-00000-of-00001.parquet",
                         "wmt/wmt17/de-en/test-00000-of-00001.parquet"]  # not wmt17's training data
    return data


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_wmt_splits_prepare_and_train_offline(wmt_dir, tmp_path):
    """With the files present, no network and HF_DATASETS_OFFLINE=1: preparing again is a cache hit, training reads
    the Arrow tables."""
    root = wmt_dir / "translation"
    before = _files(root)
    r = run_script("scripts/prepare.py", *PAPER_SMALL, f"data_dir={wmt_dir}", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _files(root) == before
    r = run_script("scripts/train.py", *PAPER_SMALL, f"data_dir={wmt_dir}", "norm=rmsnorm", "logger=none",
                   "train.progress=false", "task.model.emb=16", "task.model.hidden=16", "task.batch_size=8",
                   "train.max_steps=2", "train.eval_every=2", "train.ckpt_every=2", "task.decode.beam=2",
                   f"hydra.run.dir={tmp_path / 'run'}", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert (data["train_pairs"], data["dev_pairs"], data["test14_pairs"], data["test17_pairs"]) == (300, 10, 10, 12)


def test_offline_without_the_files_is_one_line_naming_the_target(tmp_path):
    r = run_script("scripts/prepare.py", *PAPER_SMALL, f"data_dir={tmp_path}", env=OFFLINE)
    assert r.returncode == 1
    (line,) = _error_lines(r.stderr)
    assert "huggingface.co is not reachable" in line and "rerun `make data-translation" in line


def test_a_damaged_parquet_file_is_one_line_and_nothing_half_written(wmt_dir, tmp_path):
    import shutil

    root = tmp_path / "fresh" / "translation"
    for folder in ("wmt14", "wmt17"):  # the verified downloads alone, in a folder not yet prepared
        shutil.copytree(wmt_dir / "translation" / folder, root / folder)
    shard = root / "wmt14" / "de-en" / "train-00001-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 400] = bytes(400)  # damaged in place: same size, pages unreadable
    shard.write_bytes(bytes(data))
    before = _files(root)
    r = run_script("scripts/prepare.py", *PAPER_SMALL, f"data_dir={tmp_path / 'fresh'}", env=OFFLINE)
    assert r.returncode == 1
    (line,) = _error_lines(r.stderr)
    assert "could not be read" in line and "re-run `make data-translation" in line, line
    # nothing new but `datasets`' empty lock files: no table, no BPE model, no index
    assert _files(root) == before and not list(root.rglob("*.arrow")) and not list(root.rglob("*incomplete*/"))

    shard.write_bytes(bytes(data[: len(data) // 2]))  # truncated: its size no longer that of the verified file
    r = run_script("scripts/prepare.py", *PAPER_SMALL, f"data_dir={tmp_path / 'fresh'}", env=OFFLINE)
    assert r.returncode == 1
    (line,) = _error_lines(r.stderr)
    assert "cannot download wmt/wmt14" in line and "rerun `make data-translation" in line, line
    assert "train-00001-of-00002.parquet: not the verified download any more" in r.stderr
    with pytest.raises(MissingData, match="train-00001-of-00002.parquet is not a readable parquet file"):
        D.read_text(root, "wmt14/de-en/train-*.parquet", "en", "de")
    assert not list(root.rglob("*.arrow"))
