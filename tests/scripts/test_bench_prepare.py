"""scripts/bench_prepare.py: its corpus is the hub's WMT layout and schema, and (slow) it runs end to end."""

import json
import sys

import pytest

from tests.conftest import REPO, run_script

sys.path.insert(0, str(REPO / "scripts"))
import bench_prepare  # noqa: E402


def test_the_corpus_is_the_hubs_layout_and_schema_and_reads_through_datasets(tmp_path):
    import hashlib

    from experiments.translation import data as D

    listing = bench_prepare.write_corpus(tmp_path, 40, shards=2)
    assert sorted(listing["wmt/wmt14"]) == ["de-en/test-00000-of-00001.parquet", "de-en/train-00000-of-00002.parquet",
                                            "de-en/train-00001-of-00002.parquet",
                                            "de-en/validation-00000-of-00001.parquet"]
    assert list(listing["wmt/wmt17"]) == ["de-en/test-00000-of-00001.parquet"]
    for repo, files in listing.items():
        for path, sha in files.items():
            assert hashlib.sha256((tmp_path / repo / path).read_bytes()).hexdigest() == sha
    text = D.read_text(tmp_path / "wmt/wmt14", "de-en/train-*.parquet", "en", "de")
    assert len(text) == 40 and text.data.schema == D.hub_schema()
    sources, targets = D.sentences(text, "en", "de", "train")
    assert all(s.endswith(".") and s[0].isupper() for s in sources + targets)


def test_it_needs_a_commit_to_compare_with():
    r = run_script("scripts/bench_prepare.py", "--pairs", "10")
    assert r.returncode == 2 and "--before <rev> is required" in r.stderr


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    r = run_script("scripts/bench_prepare.py", "--before", "HEAD", "--pairs", "300", "--rounds", "1", "--bpe-vocab",
                   "200", "--batches", "5", "--steps", "1", "--override", "task.model.emb=16", "--override",
                   "task.model.hidden=16", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] and data["pairs"] == 300 and {r["code"] for r in data["runs"]} == {"before", "after"}
    for code in ("before", "after"):
        assert data["summary"][code]["prepare_s"] > 0 and data["summary"][code]["max_rss_mb"] > 0
        assert data["loader"][code]["batches_per_s"] > 0 and data["loader"][code]["steps_per_s"] > 0
