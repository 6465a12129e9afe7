"""Parallel text for translation: local files in the Hugging Face WMT schema, one sentencepiece BPE model
shared by both languages, length filtering and token-bucketed batches.

Files are JSON lines (`.jsonl`), JSON (`.json`, a list or {"data": [...]}) or Parquet (`.parquet`), each
record `{"translation": {"de": ..., "en": ...}}` as `datasets` writes WMT. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.core.atomic import save_torch
from experiments.core.errors import MissingData

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
MAKE_TARGET = "make data-translation"


def read_pairs(path: Path, src: str, tgt: str) -> list[tuple[str, str]]:
    """(source, target) sentences of one file; clear errors for absent, empty or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise MissingData(f"no translation data at {path}; run `{MAKE_TARGET}` (needs internet, once), or point "
                          "data_dir at a folder holding the files the task config names")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text) if text.strip() else []
            records = loaded.get("data", []) if isinstance(loaded, dict) else loaded
    if not records:
        raise MissingData(f"{path} holds no sentence pairs; re-run `{MAKE_TARGET}` or check the file")
    pairs = []
    for i, record in enumerate(records):
        pair = record.get("translation", {}) if isinstance(record, dict) else {}
        s, t = pair.get(src), pair.get(tgt)
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            raise MissingData(f"{path}, record {i + 1}: expected {{'translation': {{'{src}': text, '{tgt}': text}}}} "
                              f"with both sides non-empty, got {str(record)[:200]}")
        pairs.append((s.strip(), t.strip()))
    return pairs


def load_bpe(path: Path):
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise MissingData(f"no BPE model at {path}; `{MAKE_TARGET}` learns it, or train one with "
                          "scripts/prepare_translation.py --bpe-only")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise MissingData(f"the BPE model {path} is corrupt ({exc}); re-run `{MAKE_TARGET}`") from exc


def train_bpe(sentences: list[str], model_path: Path, vocab_size: int) -> None:
    """A joint BPE model over both languages (sentencepiece: no pre-tokenisation, lossless detokenisation)."""
    import sentencepiece as spm

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(model_path.with_suffix("")), model_type="bpe",
        vocab_size=vocab_size, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, character_coverage=1.0,
        input_sentence_size=10_000_000, shuffle_input_sentence=True, minloglevel=2, hard_vocab_limit=False,
    )


@dataclass
class Encoded:
    """BPE ids of one side of a corpus as one flat int32 tensor plus offsets: 4.5M pairs as Python lists
    would need gigabytes."""

    src: torch.Tensor  # flat ids
    src_offsets: torch.Tensor  # (N + 1,)
    tgt: torch.Tensor
    tgt_offsets: torch.Tensor
    refs: list[str]  # the raw target sentences, the references BLEU compares with

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src_lengths(self) -> torch.Tensor:
        return self.src_offsets[1:] - self.src_offsets[:-1]

    def tgt_lengths(self) -> torch.Tensor:
        return self.tgt_offsets[1:] - self.tgt_offsets[:-1]

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        s0, s1, t0, t1 = self.src_offsets[i], self.src_offsets[i + 1], self.tgt_offsets[i], self.tgt_offsets[i + 1]
        return self.src[s0:s1].tolist(), self.tgt[t0:t1].tolist()

    def subset(self, keep: list[int]) -> Encoded:
        src = [self.pair(i)[0] for i in keep]
        tgt = [self.pair(i)[1] for i in keep]
        return Encoded(*_flatten(src), *_flatten(tgt), [self.refs[i] for i in keep])


def _flatten(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(s) for s in seqs], dtype=torch.int64)
    flat = torch.tensor([tok for s in seqs for tok in s], dtype=torch.int32)
    return flat, lengths.cumsum(0)


def encode_file(path: Path, sp, src: str, tgt: str, max_len: int | None) -> Encoded:
    """BPE ids of a file, cached next to it per BPE model; pairs longer than max_len on either side dropped."""
    path = Path(path)
    if not path.is_file():
        read_pairs(path, src, tgt)  # raises the clear error
    key = hashlib.sha1(sp.serialized_model_proto()).hexdigest()[:12]
    cache = path.with_name(f".{path.name}.{src}-{tgt}.{key}.pt")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        enc = Encoded(**torch.load(cache, weights_only=False))
    else:
        pairs = read_pairs(path, src, tgt)
        enc = Encoded(*_flatten(sp.encode([s for s, _ in pairs])), *_flatten(sp.encode([t for _, t in pairs])),
                      [t for _, t in pairs])
        save_torch(vars(enc), cache)
    if max_len is None:
        return enc
    ok = (enc.src_lengths() <= max_len) & (enc.tgt_lengths() <= max_len) & (enc.src_lengths() > 0)
    if not bool(ok.all()):
        log.info("%s: dropped %d of %d pairs longer than %d BPE tokens", path.name, int((~ok).sum()), len(enc),
                 max_len)
        enc = enc.subset(ok.nonzero().flatten().tolist())
    return enc


def pad_batch(seqs: list[list[int]], bos: bool, eos: bool) -> torch.Tensor:
    """(T, B) int64 with PAD after each sequence; optional BOS in front and EOS behind."""
    seqs = [([BOS] if bos else []) + s + ([EOS] if eos else []) for s in seqs]
    out = torch.full((max(len(s) for s in seqs), len(seqs)), PAD, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[: len(s), j] = torch.tensor(s, dtype=torch.long)
    return out


def count_batches(n: int, batch_size: int, pool: int = 20) -> int:
    """How many batches `bucketed_batches` makes of n pairs, without shuffling or sorting anything."""
    span = batch_size * pool
    full, rest = divmod(n, span)
    return full * pool + -(-rest // batch_size)


def bucketed_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator, pool: int = 20
) -> list[list[int]]:
    """Batches of `batch_size` pairs of similar length: shuffle, sort within pools of `pool` batches, shuffle
    the batches. Little padding, random order, fixed by the generator; the count depends on len(lengths) only."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]
