"""Parallel text for translation: local files in the Hugging Face WMT schema, one sentencepiece BPE model
shared by both languages, length filtering and token-bucketed batches.

Files are JSON lines (`.jsonl`), JSON (`.json`, a list or {"data": [...]}) or Parquet (`.parquet`), each
record `{"translation": {"de": ..., "en": ...}}` as `datasets` writes WMT. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.core.atomic import save_torch
from experiments.core.data.batching import Ragged
from experiments.core.errors import MissingData

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
MAKE_TARGET = "make data-translation"
FORMAT = "r2"  # the id caches' layout (ragged sides); in the file name, so an older cache is re-encoded


def read_pairs(path: Path, src: str, tgt: str, make_target: str = MAKE_TARGET) -> list[tuple[str, str]]:
    """(source, target) sentences of one file; clear errors for absent, empty or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise MissingData(f"no translation data at {path}; run `{make_target}`, or point "
                          "data_dir at a folder holding the files the task config names")
    records = _read_records(path, make_target)
    if not records:
        raise MissingData(f"{path} holds no sentence pairs; re-run `{make_target}` or check the file")
    pairs = []
    for i, record in enumerate(records):
        pair = record.get("translation", {}) if isinstance(record, dict) else {}
        s, t = pair.get(src), pair.get(tgt)
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            raise MissingData(f"{path}, record {i + 1}: expected {{'translation': {{'{src}': text, '{tgt}': text}}}} "
                              f"with both sides non-empty, got {str(record)[:200]}")
        pairs.append((s.strip(), t.strip()))
    return pairs


def _read_records(path: Path, make_target: str) -> list:
    """The file's records; a MissingData naming the file (and for .jsonl the line) where it does not parse."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise MissingData(f"{path} is not a readable parquet file ({exc}); re-run `{make_target}`") from exc
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MissingData(f"{path} is not UTF-8 text ({exc}); re-run `{make_target}`") from exc
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MissingData(f"{path}, line {number}: not a JSON record ({exc.msg}): {line[:120]!r}; fix or "
                                  f"delete the line, or re-run `{make_target}`") from exc
        return records
    try:
        loaded = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise MissingData(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg}); re-run `{make_target}`") from exc
    return loaded.get("data", []) if isinstance(loaded, dict) else loaded


def load_bpe(path: Path, make_target: str = MAKE_TARGET):
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise MissingData(f"no BPE model at {path}; `{make_target}` learns it")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise MissingData(f"the BPE model {path} is corrupt ({exc}); re-run `{make_target}`") from exc


def train_bpe(sentences: list[str], model_path: Path, vocab_size: int) -> None:
    """A joint BPE model over both languages (sentencepiece: no pre-tokenisation, lossless detokenisation).
    Trained into a private folder and moved into place, so a reader never sees half a model."""
    import sentencepiece as spm

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".bpe-") as tmp:
        prefix = Path(tmp) / model_path.stem
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_prefix=str(prefix), model_type="bpe",
            vocab_size=vocab_size, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, character_coverage=1.0,
            input_sentence_size=10_000_000, shuffle_input_sentence=True, minloglevel=2, hard_vocab_limit=False,
        )
        pieces = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model"))).get_piece_size()
        if pieces != vocab_size:  # too little text for that many merges: say so rather than train on fewer
            raise MissingData(f"the training text yields only {pieces} BPE pieces, not {vocab_size}; set "
                              f"task.bpe_vocab_size={pieces} or give more text")
        os.replace(prefix.with_suffix(".vocab"), model_path.with_suffix(".vocab"))
        os.replace(prefix.with_suffix(".model"), model_path)


@dataclass
class Encoded:
    """BPE ids of a corpus, each side ragged (one flat int32 tensor plus offsets: 4.5M pairs as Python lists would
    need gigabytes). `refs` (the raw target sentences BLEU compares with) only for evaluation sets."""

    src: Ragged
    tgt: Ragged
    refs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.src)

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        return self.src[i].tolist(), self.tgt[i].tolist()

    def subset(self, keep: torch.Tensor) -> Encoded:
        """The pairs at indices `keep` (a 1-d integer tensor), gathered with tensor ops only."""
        keep = torch.as_tensor(keep, dtype=torch.int64)
        refs = None if self.refs is None else [self.refs[i] for i in keep.tolist()]
        return Encoded(self.src.take(keep), self.tgt.take(keep), refs)

    def state(self) -> dict:
        return {"src": self.src.state(), "tgt": self.tgt.state(), "refs": self.refs}

    @classmethod
    def from_state(cls, state: dict) -> Encoded:
        return cls(Ragged.from_state(state["src"]), Ragged.from_state(state["tgt"]), state["refs"])


def encoded_path(path: Path, sp, src: str, tgt: str) -> Path:
    """Where the ids of a text file under one BPE model are kept: next to it, keyed by the model."""
    key = hashlib.sha1(sp.serialized_model_proto()).hexdigest()[:12]
    return Path(path).with_name(f".{Path(path).name}.{src}-{tgt}.{key}.{FORMAT}.pt")


def encode_file(path: Path, sp, src: str, tgt: str, with_refs: bool) -> Path:
    """Encode a file's pairs with the BPE model into its cache (atomic) unless it is there already."""
    cache = encoded_path(path, sp, src, tgt)
    if not cache.exists() or cache.stat().st_mtime < Path(path).stat().st_mtime:
        pairs = read_pairs(path, src, tgt)
        enc = Encoded(Ragged.from_lists(sp.encode([s for s, _ in pairs])),
                      Ragged.from_lists(sp.encode([t for _, t in pairs])), [t for _, t in pairs] if with_refs else None)
        save_torch(enc.state(), cache)
        log.info("%s: %d pairs encoded into %s", Path(path).name, len(enc), cache.name)
    return cache


def load_encoded(path: Path, sp, src: str, tgt: str, max_len: int | None, make_target: str) -> Encoded:
    """The ids that preparation encoded; pairs longer than max_len on either side dropped. Reads only."""
    path = Path(path)
    if not path.is_file():
        read_pairs(path, src, tgt, make_target)  # raises the clear error
    cache = encoded_path(path, sp, src, tgt)
    if not cache.exists():
        raise MissingData(f"{path.name} is not encoded with this BPE model yet ({cache.name}); run `{make_target}`")
    enc = Encoded.from_state(torch.load(cache, weights_only=False))
    if max_len is None:
        return enc
    src_len, tgt_len = enc.src.lengths(), enc.tgt.lengths()
    ok = (src_len <= max_len) & (tgt_len <= max_len) & (src_len > 0)
    if not bool(ok.all()):
        log.info("%s: dropped %d of %d pairs longer than %d BPE tokens", path.name, int((~ok).sum()), len(enc),
                 max_len)
        enc = enc.subset(ok.nonzero().flatten())
    return enc


def pad_batch(seqs: list[list[int]], bos: bool, eos: bool) -> torch.Tensor:
    """(T, B) int64 with PAD after each sequence; optional BOS in front and EOS behind."""
    seqs = [([BOS] if bos else []) + s + ([EOS] if eos else []) for s in seqs]
    out = torch.full((max(len(s) for s in seqs), len(seqs)), PAD, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[: len(s), j] = torch.tensor(s, dtype=torch.long)
    return out
