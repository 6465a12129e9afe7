"""Everything translation training reads, written before training: the WMT files (downloaded through
`datasets`, or the demo's generated task), the joint BPE model, and each file's BPE ids."""

from __future__ import annotations

import fnmatch
import json
import logging
import random
from pathlib import Path

from omegaconf import OmegaConf

from experiments.core.atomic import save_lines
from experiments.core.data.download import Offline, check_digest, is_network_error, offline_message
from experiments.core.data.generated import ensure_generated
from experiments.translation import data as D
from experiments.translation.synthetic import write_synthetic

log = logging.getLogger(__name__)

# split name in the paper preset -> (hub data set, files in it). The `wmt/wmt14` and `wmt/wmt17` repositories
# serve their data as parquet files since the `datasets` library stopped running loading scripts (the old
# `load_dataset("wmt14", "de-en")` fails with current releases); their de-en validation split is newstest2013,
# test newstest2014 (wmt14) and newstest2017 (wmt17). Each file is fetched on its own, so newstest2017 does not
# pull wmt17's 1 GB of training data.
HUB_SOURCES = {
    "train": ("wmt/wmt14", "de-en/train-*.parquet"),
    "dev": ("wmt/wmt14", "de-en/validation-*.parquet"),
    "test14": ("wmt/wmt14", "de-en/test-*.parquet"),
    "test17": ("wmt/wmt17", "de-en/test-*.parquet"),
}
BPE_SAMPLE = 2_000_000  # sentence pairs the BPE is learned from


def hub_files(repo: str, pattern: str, make_target: str) -> list:
    """The repository's files matching pattern, with their published sha256 (the hub's LFS metadata)."""
    from huggingface_hub import HfApi

    folder = pattern.rsplit("/", 1)[0]
    try:
        entries = list(HfApi().list_repo_tree(repo, folder, repo_type="dataset"))
    except Exception as exc:
        if is_network_error(exc):
            raise Offline(offline_message(f"{repo} {pattern}", "huggingface.co", make_target, exc)) from exc
        raise D.MissingData(f"cannot list {repo}/{folder} on the Hugging Face hub ({type(exc).__name__}: {exc}); "
                            f"check the repository still serves it, then rerun `{make_target}`") from exc
    files = sorted((e for e in entries if fnmatch.fnmatch(e.path, pattern)), key=lambda e: e.path)
    if not files:
        raise D.MissingData(f"{repo} has no files matching {pattern} any more; rerun `{make_target}` after "
                            f"updating HUB_SOURCES in experiments/translation/prepare.py")
    return files


def download_split(out: Path, repo: str, pattern: str, make_target: str) -> None:
    """The split's parquet files through the hub client (it resumes an interrupted file and caches finished
    ones), each checked against its published sha256, converted to one .jsonl written atomically."""
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    local_files = []
    for entry in hub_files(repo, pattern, make_target):
        try:
            local = Path(hf_hub_download(repo, entry.path, repo_type="dataset"))
        except Exception as exc:
            if is_network_error(exc):
                raise Offline(offline_message(f"{repo}/{entry.path}", "huggingface.co", make_target, exc)) from exc
            raise
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            # the cache's blob behind its link: a bad one removed, so the rerun downloads it again
            check_digest(local.resolve(), {"sha256": lfs.sha256}, f"{repo}/{entry.path}", make_target)
        local_files.append(local)
    count = [0]

    def lines():  # streamed batch by batch: WMT14's 4.5M pairs never sit in memory as Python objects
        for local in local_files:
            for batch in pq.ParquetFile(local).iter_batches(columns=["translation"]):
                for pair in batch.column(0).to_pylist():
                    count[0] += 1
                    yield json.dumps({"translation": pair}, ensure_ascii=False) + "\n"

    save_lines(lines(), out)
    log.info("%s: %d pairs from %s", out, count[0], repo)


def prepare(cfg, root: Path, download: bool) -> None:
    files = dict(cfg.files)
    if cfg.synthetic:
        wanted = {"generator": 2, "files": files, **OmegaConf.to_container(cfg.synthetic, resolve=True)}
        ensure_generated(root, wanted, lambda: write_synthetic(root, cfg.synthetic, files),
                         complete=all((root / f).exists() for f in files.values()))
    elif download:
        for split, file in files.items():
            if not (root / file).exists():
                if split not in HUB_SOURCES:
                    raise D.MissingData(f"no download is known for split '{split}'; put {root / file} there yourself")
                download_split(root / file, *HUB_SOURCES[split], cfg.make_target)
    bpe_path = root / cfg.bpe_model
    sp = D.load_bpe(bpe_path, cfg.make_target) if bpe_path.exists() else None
    if sp is not None and sp.get_piece_size() != cfg.bpe_vocab_size:
        # learnt for another task.bpe_vocab_size (an older preset): kept, the runs would train on other pieces
        # than their config names, so it is learnt again
        log.info("%s has %d pieces, task.bpe_vocab_size asks for %d: learning it again", bpe_path,
                 sp.get_piece_size(), cfg.bpe_vocab_size)
        sp = None
    if sp is None:
        pairs = D.read_pairs(root / files["train"], cfg.src_lang, cfg.tgt_lang, cfg.make_target)
        sample = random.Random(0).sample(pairs, min(BPE_SAMPLE, len(pairs)))
        D.train_bpe([s for pair in sample for s in pair], bpe_path, cfg.bpe_vocab_size)
        log.info("%s: joint BPE, %d pieces", bpe_path, cfg.bpe_vocab_size)
        sp = D.load_bpe(bpe_path, cfg.make_target)
    for split, file in files.items():
        D.encode_file(root / file, sp, cfg.src_lang, cfg.tgt_lang, with_refs=split != "train")
