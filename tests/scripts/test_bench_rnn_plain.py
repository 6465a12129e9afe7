"""scripts/bench_rnn_plain.py: the bench's LSTM row in its own, a plain and a reference-path process."""

import importlib.util
import sys

import pytest

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("bench_rnn_plain", REPO / "scripts" / "bench_rnn_plain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module



def test_ratios_are_ours_over_torchs_with_an_interval():
    m = _module()
    out = m.ratios({"torch": [1.0, 1.0, 1.0], "none": [2.0, 2.2, 1.8]})
    est, lo, hi = out["none"]
    assert lo <= est <= hi and 1.8 < est < 2.2


def test_the_verdict_says_agree_only_when_every_interval_pair_overlaps():
    m = _module()
    agree = [{"kind": "bench", "ratios": {"none": [1.0, 0.9, 1.1]}},
             {"kind": "plain", "ratios": {"none": [1.05, 0.95, 1.15]}},
             {"kind": "plain, reference path", "ratios": {"none": [1.5, 1.4, 1.6]}}]
    assert m.verdict(agree).startswith("The bench's process and a plain one agree")
    assert "1.50" in m.verdict(agree)
    apart = [agree[0], {"kind": "plain", "ratios": {"none": [1.5, 1.3, 1.7]}}]
    assert "disagree" in m.verdict(apart)
    assert m.verdict(agree[:1]).startswith("Not every kind")


def test_the_two_programs_differ_only_in_how_they_build_the_layers():
    m = _module()
    assert "import bench" in m.BENCH and "bench._layer" in m.BENCH and "rmsnorm.NormLSTM" not in m.BENCH
    assert "import bench" not in m.PLAIN and "rmsnorm.NormLSTM" in m.PLAIN and "BUILD" not in m.PLAIN


@pytest.mark.slow
def test_each_kind_of_process_runs_end_to_end(tmp_path):
    m = _module()
    assert m.main(["--rounds", "2", "--repeats", "1", "--out", str(tmp_path)]) == 0
    (md,) = tmp_path.glob("rnn-plain-*.md")
    text = md.read_text()
    assert "| 1 | bench |" in text and "| plain |" in text and "reference path" in text and "failed" not in text
