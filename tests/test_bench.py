"""`make bench` runs end to end (timings themselves are never asserted: they live in results/bench)."""

from tests.conftest import run_script


def test_bench_quick_writes_table_and_plot(tmp_path):
    r = run_script("scripts/bench.py", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    assert "Command: `python scripts/bench.py --quick --device cpu" in text
    for impl in ("none (x*g)", "layernorm (torch)", "rms_norm (torch)", "rmsnorm (ours)", "prmsnorm (ours", "l2norm"):
        assert text.count(f"| {impl}") == 2, impl  # one row per shape
    assert md.with_suffix(".png").stat().st_size > 1000
