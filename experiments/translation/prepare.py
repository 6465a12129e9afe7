"""Everything translation training reads, written before training: the WMT parquet files (fetched file by file
from the hub, each checked against its published sha256) or the demo's generated task in the same format, read
through `datasets`; the joint BPE model; and each split's BPE ids, which `Dataset.map` writes and caches."""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from experiments.core.atomic import save_json
from experiments.core.data.download import Offline, check_digest, is_network_error, offline_message
from experiments.core.data.generated import ensure_generated
from experiments.translation import data as D
from experiments.translation.synthetic import write_synthetic

log = logging.getLogger(__name__)

# a split's file pattern in the paper preset (configs/data/wmt14_paper.yaml) starts with the folder the hub
# repository's files go into: `wmt14/de-en/train-*.parquet` is `de-en/train-*.parquet` of `wmt/wmt14`, kept in
# data_dir/translation/wmt14/de-en/. The two repositories serve WMT as parquet, which `datasets` reads directly
# (the old `load_dataset("wmt14", "de-en")` loading script no longer runs); their de-en validation split is
# newstest2013, test newstest2014 (wmt14) and newstest2017 (wmt17). Each file is fetched on its own, so
# newstest2017 does not pull wmt17's 1 GB of training data.
HUB_REPOS = {"wmt14": "wmt/wmt14", "wmt17": "wmt/wmt17"}
VERIFIED = ".verified.json"  # in each repository's folder: the files checked against their sha256, by pattern
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
                            f"updating HUB_REPOS in experiments/translation/prepare.py")
    return files


def _intact(path: Path, known: dict | None) -> bool:
    return known is not None and path.is_file() and path.stat().st_size == known["size"]


def fetch_split(root: Path, name: str, make_target: str) -> list[Path]:
    """The hub files of one split (`name`: `<folder>/<pattern in the repository>`) in root/<folder>: downloaded
    by the hub client (it resumes an interrupted file) unless a previous run verified them, each checked against
    its published sha256 before anything reads it. A split verified before asks nothing of the network, so
    preparing again works offline."""
    from huggingface_hub import hf_hub_download

    folder, pattern = name.split("/", 1)
    repo, local = HUB_REPOS[folder], Path(root) / folder
    record_path = local / VERIFIED
    record = json.loads(record_path.read_text()) if record_path.exists() else {"patterns": {}, "files": {}}
    listed = record["patterns"].get(pattern)
    if listed is not None:
        changed = [p for p in listed if not _intact(local / p, record["files"].get(p))]
        if not changed:
            return [local / p for p in listed]
        log.warning("%s: not the verified download any more (absent or another size); fetching it again",
                    ", ".join(str(local / p) for p in changed))
    entries = hub_files(repo, pattern, make_target)
    for entry in entries:
        path, lfs = local / entry.path, getattr(entry, "lfs", None)
        sha = lfs.sha256 if lfs is not None else None
        known = record["files"].get(entry.path)
        if _intact(path, known) and known["sha256"] == sha:
            continue
        try:
            hf_hub_download(repo, entry.path, repo_type="dataset", local_dir=local)
        except Exception as exc:
            if is_network_error(exc):
                raise Offline(offline_message(f"{repo}/{entry.path}", "huggingface.co", make_target, exc)) from exc
            raise
        if sha is not None:  # a bad file is removed, so the rerun downloads it again
            check_digest(path, {"sha256": sha}, f"{repo}/{entry.path}", make_target)
        record["files"][entry.path] = {"sha256": sha, "size": path.stat().st_size}
        save_json(record, record_path)
    keep = {e.path for e in entries}
    for stale in local.glob(pattern):  # shards the repository no longer lists: not read with the new ones
        if str(stale.relative_to(local)) not in keep:
            stale.unlink()
    record["patterns"][pattern] = [e.path for e in entries]
    save_json(record, record_path)
    log.info("%s: %d files from %s, sha256 checked", name, len(entries), repo)
    return [local / e.path for e in entries]


def prepare(cfg, root: Path, download: bool) -> None:
    files = dict(cfg.files)
    src, tgt = cfg.src_lang, cfg.tgt_lang
    if cfg.synthetic:
        # generator 3: parquet in the hub's schema (2 wrote JSON lines)
        wanted = {"generator": 3, "files": files, **OmegaConf.to_container(cfg.synthetic, resolve=True)}
        ensure_generated(root, wanted, lambda: write_synthetic(root, cfg.synthetic, files),
                         complete=all((root / f).exists() for f in files.values()))
    elif download:
        for split, name in files.items():
            if name.split("/", 1)[0] in HUB_REPOS and "/" in name:
                fetch_split(root, name, cfg.make_target)
            elif not list(root.glob(name)):
                raise D.MissingData(f"no download is known for split '{split}'; put {root / name} there yourself")
    texts = {split: D.read_text(root, name, src, tgt, cfg.make_target) for split, name in files.items()}
    bpe_path = root / cfg.bpe_model
    sp = D.load_bpe(bpe_path, cfg.make_target) if bpe_path.exists() else None
    if sp is not None and sp.get_piece_size() != cfg.bpe_vocab_size:
        # learnt for another task.bpe_vocab_size (an older preset): kept, the runs would train on other pieces
        # than their config names, so it is learnt again
        log.info("%s has %d pieces, task.bpe_vocab_size asks for %d: learning it again", bpe_path,
                 sp.get_piece_size(), cfg.bpe_vocab_size)
        sp = None
    if sp is None:
        D.train_bpe(D.bpe_sample(texts["train"], src, tgt, BPE_SAMPLE, files["train"]), bpe_path,
                    cfg.bpe_vocab_size)
        log.info("%s: joint BPE, %d pieces", bpe_path, cfg.bpe_vocab_size)
        sp = D.load_bpe(bpe_path, cfg.make_target)
    for split, name in files.items():
        D.encode_split(root, name, texts[split], sp, src, tgt, with_refs=split != "train")
