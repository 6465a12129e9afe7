"""The paper's Table 1, measured: python scripts/invariance.py [--out results/invariance.md]

Applies each transformation of Table 1 to random weights and cases and checks, in float64, whether each
norm's layer output is unchanged (experiments/core/reporting/invariance.py; tests/rmsnorm/test_norms.py checks the
same table against the paper's). Writes the table with the command; `make report` and `scripts/readme.py` show it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.core.provenance import describe, stamp
from experiments.core.reporting.invariance import render, table

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "invariance.md")
    args = parser.parse_args(argv)
    text = ("# Table 1, measured: which transformation leaves h = N(W x) unchanged\n\n"
            "Command: `python scripts/invariance.py`  \n"
            f"Produced by: {describe(stamp())}  \n"
            "float64, 16 units, 12 inputs, a batch of 32 cases, eps negligible; `invariant` where the output is "
            "unchanged to 1e-9 (experiments/core/reporting/invariance.py defines each transformation).\n\n"
            + render(table()) + "\n")
    save_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
