"""Measured figures typed into prose: python scripts/prose_figures.py [FILE...] (default README.md, docs/*.md)

A measured figure (a time, a percentage, a bandwidth, a BLEU / R@K / error score) belongs in a generated block
(`<!-- generated: ... -->`, written from a results file by scripts/readme.py); typed into a paragraph it goes
stale the next time the machine or the code moves. This lists every such figure outside the generated blocks.
Allowed on a line: a figure quoted from the paper or an upstream with its source on the same line (Table 4,
Fig. 3, "the paper", Nematus, ...), a setting given with its key (`p = 50%`, `--timeout 60 s`), and a line that
says what it is with an HTML comment at its end: `<!-- setting -->` (a limit or budget, not a measurement).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NUMBER = r"(?<![\w.@-])\d+(?:[.,]\d+)?"
FIGURES = [
    ("time", re.compile(NUMBER + r"\s?(?:us|µs|ms|s|sec|secs|seconds?|min|mins|minutes?|h|hours?)\b")),
    # "95% interval": the interval's level, a setting
    ("percent", re.compile(NUMBER + r"\s?%(?! (?:t )?(?:interval|CI|confidence))")),
    ("bandwidth", re.compile(NUMBER + r"\s?GB/s")),
    ("score", re.compile(r"\b(?:BLEU|R@\d+|error)(?: of| =|:)? ?" + NUMBER + r"|" + NUMBER
                         + r"\s?(?:BLEU|% error)\b")),
]
# a source named on the line: the paper's tables and figures, the paper itself, the upstream code it ran
SOURCE = re.compile(r"\b(?:Table|Fig\.|Figure) \d+|\bthe paper\b|\bpaper's\b|\bNematus\b|\bbzhangGo\b|\bzero's\b"
                    r"|\bweight[-_ ]norm (?:code|paper)\b|\border-embedding\b|\bAttentive_reader\b|\bupstream\b",
                    re.I)
# a setting with its key: `p = 50%`, `p=0.5`, `--timeout 60`, `timeout_s=600`
SETTING = re.compile(r"(?:\bp ?= ?|--?[\w-]+[ =]|\w+=)" + NUMBER)
MARKER = "<!-- setting -->"
GENERATED = re.compile(r"<!-- generated: .*?-->.*?<!-- end generated -->", re.S)


def prose_figures(text: str) -> list[tuple[int, str, str]]:
    """(line number, kind, the figure) of each measured figure outside generated blocks and allowed lines."""
    # blank out generated blocks, keeping their line breaks so line numbers stay true
    text = GENERATED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.rstrip().endswith(MARKER) or SOURCE.search(line):
            continue
        bare = SETTING.sub(" ", line)
        for kind, pattern in FIGURES:
            found += [(number, kind, m.group(0)) for m in pattern.finditer(bare)]
    return found


def default_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or default_files()
    status = 0
    for path in files:
        for number, kind, figure in prose_figures(path.read_text()):
            print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: {kind} '{figure}' "
                  "typed into prose: move it into a generated block, or cite its source on the line")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
