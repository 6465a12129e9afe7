"""Fetch WMT14 En-De once and learn the BPE model (needs internet): make data-translation

Writes DATA_DIR/translation/{train,newstest2013,newstest2014,newstest2017}.jsonl in the Hugging Face WMT
schema and bpe.model (joint sentencepiece BPE, 32k), which is all that training reads. The BPE ids are
encoded on first use and cached next to each file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.core.atomic import save_text  # noqa: E402
from experiments.translation.data import read_pairs, train_bpe  # noqa: E402

# (file, hub data set, configuration, split)
SOURCES = [
    ("train.jsonl", "wmt14", "de-en", "train"),
    ("newstest2013.jsonl", "wmt14", "de-en", "validation"),
    ("newstest2014.jsonl", "wmt14", "de-en", "test"),
    ("newstest2017.jsonl", "wmt17", "de-en", "test"),
]


def write_split(out: Path, dataset: str, config: str, split: str) -> None:
    from datasets import load_dataset

    rows = load_dataset(dataset, config, split=split)
    save_text("".join(json.dumps({"translation": r["translation"]}, ensure_ascii=False) + "\n" for r in rows), out)
    print(f"{out}: {len(rows)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--bpe-sample", type=int, default=2_000_000, help="sentences of each language for BPE")
    parser.add_argument("--bpe-only", action="store_true", help="learn bpe.model from the train file already here")
    args = parser.parse_args()
    root = args.data_dir / "translation"
    if not args.bpe_only:
        for file, dataset, config, split in SOURCES:
            if not (root / file).exists():
                write_split(root / file, dataset, config, split)
    pairs = read_pairs(root / "train.jsonl", "en", "de")
    sample = random.Random(0).sample(pairs, min(args.bpe_sample, len(pairs)))
    train_bpe([s for pair in sample for s in pair], root / "bpe.model", args.vocab_size)
    print(f"{root / 'bpe.model'}: joint BPE, {args.vocab_size} pieces; train with data_dir={args.data_dir}")


if __name__ == "__main__":
    main()
