"""How long the suite's commands took, and where: the one record of it (results/timings.csv).

    python scripts/timings.py record "make demo" --stages data=14.2 sweeps=301.5 ... [--note "fresh clone"]
    python scripts/timings.py show ["make demo"]

`make demo` records itself at its end; `make time-test` runs the test suite from a fresh clone on purpose and
records that (a plain `make test` records nothing: it must not dirty the tree). The README states the newest
time of each command once, generated from this file (scripts/readme.py, kind `timing`); docs/timings.md shows the
whole history (kind `timings`). The hosts here vary about threefold from day to day: a time is a property of a
host on a day, so each row names both.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.core.atomic import save_text  # noqa: E402
from experiments.core.machine import machine_name  # noqa: E402
from experiments.core.provenance import stamp  # noqa: E402

FILE = REPO / "results" / "timings.csv"
FIELDS = ["date", "utc", "command", "seconds", "stages", "machine", "cores", "commit", "dirty", "torch", "note"]


def read(path: Path | None = None) -> list[dict]:
    path = path or FILE
    if not path.exists():
        return []
    return list(csv.DictReader(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#")))


def duration(seconds: float) -> str:
    """'6 min 10 s' or '48 s'."""
    seconds = round(float(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def record(command: str, seconds: float, stages: dict[str, float], note: str = "", path: Path | None = None) -> dict:
    import os
    import time

    import torch

    s = stamp()
    machine = re.sub(r", \d+ threads?$", "", machine_name(torch.device("cpu")))  # the host, not torch's threads
    row = {"date": s["date"], "utc": time.strftime("%H:%M", time.gmtime()), "command": command,
           "seconds": f"{seconds:.1f}", "stages": " ".join(f"{k}={v:.1f}" for k, v in stages.items()),
           "machine": machine, "cores": str(os.cpu_count()), "commit": s["commit"][:10],
           "dirty": "yes" if s.get("dirty") else "no", "torch": s.get("torch", ""), "note": note}
    path = path or FILE
    rows = read(path) + [row]
    out = io.StringIO()
    out.write("# python scripts/timings.py show: how long each command took, where (scripts/timings.py)\n")
    writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    save_text(out.getvalue(), path)
    return row


def describe(row: dict) -> str:
    """One sentence: the time, its stages, the host, the date and the code."""
    parts = row["stages"].split() if row["stages"] else []
    # a lone stage is the total again: not repeated
    stages = ", ".join(f"{name} {duration(value)}" for name, value in (p.split("=") for p in parts)) if len(
        parts) > 1 else ""
    where = f"the {row['cores']}-core {row['machine']}, {row['date']} {row['utc']} UTC, commit {row['commit']}"
    dirty = " with uncommitted changes" if row.get("dirty") == "yes" else ""
    note = f"; {row['note']}" if row.get("note") else ""
    return (f"`{row['command']}`: **{duration(row['seconds'])}**" + (f" ({stages})" if stages else "")
            + f" on {where}{dirty}{note}")


def newest(command: str, rows: list[dict]) -> dict | None:
    found = [r for r in rows if r["command"] == command]
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="append one timing")
    rec.add_argument("command")
    rec.add_argument("--seconds", type=float, help="the total (default: the sum of the stages)")
    rec.add_argument("--stages", nargs="*", default=[], help="name=seconds, in order")
    rec.add_argument("--stamps", nargs="*", default=[],
                     help="start=EPOCH name=EPOCH ...: each stage the time since the stamp before it (date +%%s.%%N)")
    rec.add_argument("--note", default="")
    show = sub.add_parser("show", help="print the history (of one command)")
    show.add_argument("command", nargs="?")
    args = parser.parse_args(argv)
    if args.action == "record":
        try:
            stages = {k: float(v) for k, v in (s.split("=", 1) for s in args.stages)}
            stamps = [(k, float(v)) for k, v in (s.split("=", 1) for s in args.stamps)]
        except ValueError:
            parser.error("--stages and --stamps take name=seconds pairs, e.g. data=14.2 sweeps=301.5")
        stages.update({name: t - before for (_, before), (name, t) in zip(stamps, stamps[1:], strict=False)})
        total = args.seconds if args.seconds is not None else sum(stages.values())
        print(describe(record(args.command, total, stages, args.note)))
        return 0
    for row in read():
        if args.command is None or row["command"] == args.command:
            print(describe(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
