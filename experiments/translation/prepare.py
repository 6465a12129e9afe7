"""Everything translation training reads, written before training: the WMT files (downloaded through
`datasets`, or the demo's generated task), the joint BPE model, and each file's BPE ids."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.translation import data as D
from experiments.translation.synthetic import write_synthetic

log = logging.getLogger(__name__)

# split name in the paper preset -> (hub data set, configuration, split)
WMT_SOURCES = {
    "train": ("wmt14", "de-en", "train"),
    "dev": ("wmt14", "de-en", "validation"),
    "test14": ("wmt14", "de-en", "test"),
    "test17": ("wmt17", "de-en", "test"),
}
BPE_SAMPLE = 2_000_000  # sentence pairs the BPE is learned from


def download_split(out: Path, dataset: str, config: str, split: str) -> None:
    from datasets import load_dataset

    rows = load_dataset(dataset, config, split=split)
    save_text("".join(json.dumps({"translation": r["translation"]}, ensure_ascii=False) + "\n" for r in rows), out)
    log.info("%s: %d pairs", out, len(rows))


def prepare(cfg, root: Path, download: bool) -> None:
    files = dict(cfg.files)
    if cfg.synthetic:
        if not all((root / f).exists() for f in files.values()):
            log.info("writing the generated translation task to %s", root)
            write_synthetic(root, dict(cfg.synthetic.sizes), files)
    elif download:
        for split, file in files.items():
            if not (root / file).exists():
                if split not in WMT_SOURCES:
                    raise D.MissingData(f"no download is known for split '{split}'; put {root / file} there yourself")
                download_split(root / file, *WMT_SOURCES[split])
    bpe_path = root / cfg.bpe_model
    if not bpe_path.exists():
        pairs = D.read_pairs(root / files["train"], cfg.src_lang, cfg.tgt_lang, cfg.make_target)
        sample = random.Random(0).sample(pairs, min(BPE_SAMPLE, len(pairs)))
        D.train_bpe([s for pair in sample for s in pair], bpe_path, cfg.bpe_vocab_size)
        log.info("%s: joint BPE, %d pieces", bpe_path, cfg.bpe_vocab_size)
    sp = D.load_bpe(bpe_path, cfg.make_target)
    for split, file in files.items():
        D.encode_file(root / file, sp, cfg.src_lang, cfg.tgt_lang, with_refs=split != "train")
