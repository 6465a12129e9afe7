"""results/paper/tables.csv (every numeric table of the paper, long format) is well formed, and the per-task paper
CSVs that the code reads (cifar10, reading, retrieval, translation) agree with it number for number."""

import csv
import re
from pathlib import Path

import pytest

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
TABLES = PAPER_DIR / "tables.csv"
HEADER = ["task", "table", "row", "metric", "value", "std", "unit", "source"]
REQUIRED = ["task", "table", "row", "metric", "value", "unit"]
TASKS = {"cifar10", "reading", "retrieval", "translation", "transformer"}
TIME_COLUMNS = ("norm", "time", "time_std", "time_unit")

# per-task file -> (table of its metric columns, table of its time column), as each file's comment cites them
PER_TASK = {
    "cifar10": ("Table 10", "Table 10"),
    "reading": (None, "Table 6"),
    "retrieval": ("Table 7", "Table 8"),
    "translation": ("Table 2", "Table 2"),
    "transformer": ("Table 4", "Table 4"),
}


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The `#` comment lines and the rows of a CSV whose comments may come anywhere."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return comments, rows


@pytest.fixture(scope="module")
def tables() -> list[dict[str, str]]:
    return _read(TABLES)[1]


@pytest.fixture(scope="module")
def by_key(tables) -> dict[tuple[str, str, str, str], dict[str, str]]:
    return {(r["task"], r["table"], r["row"], r["metric"]): r for r in tables}


def test_tables_csv_starts_with_a_comment_then_the_header():
    with open(TABLES, newline="") as f:
        first = f.readline()
        assert first.startswith("# ") and "the paper" in first.lower()
        header = next(csv.reader(line for line in f if not line.startswith("#")))
    assert header == HEADER


def test_every_row_is_complete_and_numeric(tables):
    assert len(tables) > 100
    for r in tables:
        assert list(r) == HEADER and None not in r.values(), r
        for col in REQUIRED:
            assert r[col].strip(), f"empty {col}: {r}"
        assert r["task"] in TASKS, r
        assert re.fullmatch(r"[a-z0-9_]+", r["row"]) and re.fullmatch(r"[a-z0-9_]+", r["metric"]), r
        assert re.fullmatch(r"Table \d+( \(\w+\))?", r["table"]), r
        float(r["value"])
        if r["std"]:
            assert float(r["std"]) >= 0, r
        assert "%" not in r["value"], r


def test_rows_are_unique(tables):
    keys = [(r["task"], r["table"], r["row"], r["metric"]) for r in tables]
    assert len(keys) == len(set(keys))


def test_every_table_of_the_paper_is_there(tables):
    assert {r["table"] for r in tables} == {"Table 2", "Table 3 (Theano)", "Table 3 (PyTorch)", "Table 4", "Table 5",
                                           "Table 6", "Table 7", "Table 8", "Table 10"}


def test_printed_speedups_follow_the_papers_formula(tables, by_key):
    """Speed-up % = (T_LN - T_X) / T_LN, printed to one decimal: a check on the transcribed times."""
    speedups = [r for r in tables if r["metric"] == "speedup"]
    assert len(speedups) == 14
    for r in speedups:
        t_ln = float(by_key[(r["task"], r["table"], "layernorm", "time")]["value"])
        t_x = float(by_key[(r["task"], r["table"], r["row"], "time")]["value"])
        assert 100 * (t_ln - t_x) / t_ln == pytest.approx(float(r["value"]), abs=0.05 + 1e-9), r


@pytest.mark.parametrize("task", sorted(PER_TASK))
def test_per_task_csv_matches_tables_csv(task, tables, by_key):
    metric_table, time_table = PER_TASK[task]
    comments, rows = _read(PAPER_DIR / f"{task}.csv")
    cited = {n for m in re.finditer(r"Tables? (\d+)(?: and (\d+))?", " ".join(comments)) for n in m.groups() if n}
    assert {t.split()[1] for t in (metric_table, time_table) if t} <= cited, (task, comments)

    metrics = [c for c in rows[0] if c not in TIME_COLUMNS]
    assert bool(metrics) == (metric_table is not None)
    for row in rows:
        norm = row["norm"]
        for m in metrics:
            if row[m] == "":  # a cell the paper printed as '-'
                assert (task, metric_table, norm, m) not in by_key, (task, norm, m)
                continue
            paper = by_key[(task, metric_table, norm, m)]
            assert float(row[m]) == float(paper["value"]), (task, norm, m)
        paper = by_key[(task, time_table, norm, "time")]
        assert float(row["time"]) == float(paper["value"]), (task, norm, "time")
        assert float(row["time_std"]) == float(paper["std"]), (task, norm, "time_std")
        assert row["time_unit"] == paper["unit"], (task, norm, "time_unit")

    # and nothing in those tables is missing from the per-task file
    for m in [*metrics, "time"]:
        table = time_table if m == "time" else metric_table
        norms = {row["norm"] for row in rows if row[m] != ""}
        assert {r["row"] for r in tables if (r["task"], r["table"], r["metric"]) == (task, table, m)} == norms, m
    expected = {(metric_table, m) for m in metrics} | {(time_table, "time")}
    extra = {(r["table"], r["metric"]) for r in tables
             if r["task"] == task and r["table"] in {metric_table, time_table} and r["metric"] != "speedup"}
    assert extra == expected, f"{task}: tables.csv has columns the per-task file lacks: {extra - expected}"
