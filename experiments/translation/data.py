"""Parallel text for translation, read through Hugging Face `datasets`: each split's files in the hub's WMT
schema (parquet with one column `translation` holding {"de": text, "en": text}, as the hub's `wmt/wmt14` and
`wmt/wmt17` serve it; JSON lines of the same records are read too), one sentencepiece BPE model shared by both
languages, the BPE ids as Arrow tables that `Dataset.map` writes and caches, length filtering and padded batches.

Everything stays in the task's folder (data_dir/<data_subdir>): the text files; `datasets`' cache in
`datasets-cache/` (the text as Arrow, and the ids `Dataset.map` wrote, keyed by the text's fingerprint and the BPE
model, so preparing again is a cache hit); and per split a small index naming the ids' Arrow files, which
training reads, memory-mapped, without `datasets` recomputing anything. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.core.atomic import save_json
from experiments.core.data.batching import Ragged
from experiments.core.errors import MissingData

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
MAKE_TARGET = "make data-translation"
FORMAT = "r3"  # the id indexes' layout (Arrow tables of `Dataset.map`); in the file name, so an older one is redone
CACHE = "datasets-cache"  # `datasets`' cache_dir, inside the task's folder
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}  # a file's suffix -> the `datasets` builder
ROWS_PER_WORKER = 50_000  # `Dataset.map` spreads over processes only for sets of at least this many pairs a process


def hub_schema():
    """The hub's WMT de-en parquet schema: one struct column, `translation`, of the two sentences."""
    import pyarrow as pa

    return pa.schema([("translation", pa.struct([("de", pa.string()), ("en", pa.string())]))])


def write_parquet(records: list[dict], path: Path) -> None:
    """Records {"translation": {"de": ..., "en": ...}} as a parquet file in the hub's schema, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records, schema=hub_schema())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def text_files(root: Path, name: str, make_target: str = MAKE_TARGET) -> list[Path]:
    """The files of one split: root/name, where name may be a glob (`wmt14/de-en/train-*.parquet`, the hub's
    shards); a clear error when there are none or their format is unknown."""
    root = Path(root)
    files = sorted(p for p in root.glob(name) if p.is_file()) if any(c in name for c in "*?[") else (
        [root / name] if (root / name).is_file() else [])
    if not files:
        raise MissingData(f"no translation data at {root / name}; run `{make_target}`, or point "
                          "data_dir at a folder holding the files the task config names")
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1 or not suffixes <= set(BUILDERS):
        raise MissingData(f"{root / name}: expected .parquet (the hub's WMT files) or .jsonl files, one kind, got "
                          f"{', '.join(sorted(suffixes))}")
    return files


def _quiet_progress() -> None:
    import datasets

    if not sys.stderr.isatty():  # bars for a person at a terminal, not in logs and tests
        datasets.disable_progress_bars()


def _first_line(exc: BaseException) -> str:
    """The innermost cause's message, first line: the Arrow error behind `datasets`' wrapper."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_text(root: Path, name: str, src: str, tgt: str, make_target: str = MAKE_TARGET):
    """One split's text as a `datasets.Dataset` (memory-mapped Arrow in the folder's `datasets` cache; a cache hit
    when the files are unchanged). A damaged file is one line naming it and the command; `datasets` builds into
    a temporary folder and renames it, so a failed read leaves no half-written table behind."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    files = text_files(root, name, make_target)
    if files[0].suffix == ".parquet":
        for f in files:  # a truncated file (no footer) named before `datasets` starts on the split
            try:
                pq.read_metadata(f)
            except (pa.ArrowException, OSError) as exc:
                raise MissingData(f"{f} is not a readable parquet file ({_first_line(exc)}); delete it and "
                                  f"re-run `{make_target}`") from exc
    if not any(f.stat().st_size for f in files):
        raise MissingData(f"{root / name} holds no sentence pairs; re-run `{make_target}` or check the file")
    _quiet_progress()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own log line of the error below: one is enough
    try:
        text = datasets.load_dataset(BUILDERS[files[0].suffix], data_files=[str(f) for f in files], split="train",
                                     cache_dir=str(root / CACHE))
    except Exception as exc:  # local files only: whatever fails here is the file's fault
        where = files[0] if len(files) == 1 else f"{root / name} ({len(files)} files)"
        raise MissingData(f"{where} could not be read ({_first_line(exc)}); delete the damaged file and re-run "
                          f"`{make_target}`") from exc
    finally:
        datasets.logging.set_verbosity(verbosity)
    field = text.data.schema.field("translation").type if "translation" in text.column_names else None
    if field is None or not pa.types.is_struct(field) or {src, tgt} - {field.field(i).name
                                                                      for i in range(field.num_fields)}:
        raise MissingData(f"{root / name}: expected records {{'translation': {{'{src}': text, '{tgt}': text}}}} (the "
                          f"hub's WMT schema), got columns {text.features}")
    if len(text) == 0:
        raise MissingData(f"{root / name} holds no sentence pairs; re-run `{make_target}` or check the file")
    return text


def _sides(column, src: str, tgt: str, rows: list[int], name: str) -> tuple[list[str], list[str]]:
    """The stripped source and target sentences of an Arrow `translation` column; an error naming the record where
    a side is absent or empty."""
    import pyarrow.compute as pc

    out = []
    for lang in (src, tgt):
        out.append([s.strip() if s is not None else "" for s in pc.struct_field(column, [lang]).to_pylist()])
    for j, (s, t) in enumerate(zip(*out, strict=True)):
        if not s or not t:
            raise MissingData(f"{name}, record {rows[j] + 1}: expected {{'translation': {{'{src}': text, '{tgt}': "
                              f"text}}}} with both sides non-empty, got {str(column[j].as_py())[:200]}")
    return out[0], out[1]


def sentences(text, src: str, tgt: str, name: str) -> tuple[list[str], list[str]]:
    """Every source and target sentence of a split, stripped, in order (small sets: tests, references)."""
    return _sides(text.data.table.column("translation"), src, tgt, list(range(len(text))), name)


def bpe_sample(text, src: str, tgt: str, limit: int, name: str) -> Iterator[str]:
    """Up to `limit` pairs drawn at random (seed 0) from the split, each as its source then its target sentence,
    streamed from the Arrow table (the BPE learns from them)."""
    rows = random.Random(0).sample(range(len(text)), min(limit, len(text)))
    table = text.data.table.select(["translation"]).take(rows)
    start = 0
    for batch in table.to_batches(max_chunksize=50_000):
        sources, targets = _sides(batch.column(0), src, tgt, rows[start : start + batch.num_rows], name)
        start += batch.num_rows
        for s, t in zip(sources, targets, strict=True):
            yield s
            yield t


def load_bpe(path: Path, make_target: str = MAKE_TARGET):
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise MissingData(f"no BPE model at {path}; `{make_target}` learns it")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise MissingData(f"the BPE model {path} is corrupt ({exc}); re-run `{make_target}`") from exc


def train_bpe(sentences: Iterable[str], model_path: Path, vocab_size: int) -> None:
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


class BatchEncoder:
    """`Dataset.map`'s function: a batch of the text (an Arrow table) -> its BPE ids, and for evaluation sets the
    target sentence BLEU compares with. Holds the model's bytes, so it pickles into `num_proc` workers; each loads
    its processor once."""

    def __init__(self, model: bytes, src: str, tgt: str, refs: bool, name: str):
        self.model, self.src, self.tgt, self.refs, self.name = model, src, tgt, refs, name
        self._sp = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sp": None}

    def __call__(self, batch, rows: list[int]) -> dict:
        if self._sp is None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=self.model)
        sources, targets = _sides(batch.column("translation"), self.src, self.tgt, rows, self.name)
        out = {"src": self._sp.encode(sources), "tgt": self._sp.encode(targets)}
        if self.refs:
            out["ref"] = targets
        return out


def bpe_key(sp) -> str:
    return hashlib.sha1(sp.serialized_model_proto()).hexdigest()[:12]


def workers(rows: int) -> int | None:
    """`Dataset.map`'s num_proc: the machine's cores, one per ROWS_PER_WORKER pairs; None (in this process) below."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = min(cores, rows // ROWS_PER_WORKER)
    return n if n > 1 else None


def index_path(root: Path, name: str, sp, src: str, tgt: str) -> Path:
    """The index of a split's ids under one BPE model: in the task's folder, keyed by the model."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return Path(root) / f".{slug}.{src}-{tgt}.{bpe_key(sp)}.{FORMAT}.json"


def encode_split(root: Path, name: str, text, sp, src: str, tgt: str, with_refs: bool) -> Path:
    """The split's BPE ids through `Dataset.map` (batched, over the machine's cores), cached by `datasets` under
    a fingerprint of the text and the model: preparing again finds them. Then the index training reads, written
    atomically and last."""
    import datasets

    key = hashlib.sha1(f"{text._fingerprint}|{bpe_key(sp)}|{src}-{tgt}|{with_refs}|{FORMAT}".encode()).hexdigest()
    ids = datasets.Features({"src": datasets.List(datasets.Value("int32")),
                             "tgt": datasets.List(datasets.Value("int32")),
                             **({"ref": datasets.Value("string")} if with_refs else {})})
    _quiet_progress()
    encoded = text.with_format("arrow").map(
        BatchEncoder(sp.serialized_model_proto(), src, tgt, with_refs, name), batched=True, with_indices=True,
        num_proc=workers(len(text)), remove_columns=text.column_names, features=ids, new_fingerprint=key[:16],
        desc=f"BPE {name}")
    root = Path(root).resolve()
    index = index_path(root, name, sp, src, tgt)
    record = {"text": name, "rows": len(encoded), "fingerprint": encoded._fingerprint,
              "files": [str(Path(f["filename"]).resolve().relative_to(root)) for f in encoded.cache_files]}
    if not index.exists() or json.loads(index.read_text()) != record:
        save_json(record, index)
        log.info("%s: %d pairs encoded (%s)", name, len(encoded), index.name)
    return index


def _ragged(column) -> Ragged:
    """An Arrow list<int32> column as a Ragged: the ids copied once out of the memory-mapped record batches."""
    import pyarrow.compute as pc

    chunks = [c for c in column.chunks if len(c)]
    lengths = np.concatenate([pc.list_value_length(c).to_numpy() for c in chunks]) if chunks else np.zeros(0)
    values = [pc.list_flatten(c).to_numpy() for c in chunks]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.from_numpy(lengths.astype(np.int64)).cumsum(0)
    flat = np.concatenate(values).astype(np.int32, copy=False) if values else np.zeros(0, dtype=np.int32)
    return Ragged(torch.from_numpy(flat), offsets)


def load_encoded(root: Path, name: str, sp, src: str, tgt: str, max_len: int | None, make_target: str) -> Encoded:
    """The ids that preparation encoded (the Arrow tables its index names, memory-mapped); pairs longer than
    max_len on either side dropped. Reads only."""
    import datasets
    import pyarrow as pa

    root = Path(root)
    index = index_path(root, name, sp, src, tgt)
    if not index.exists():
        text_files(root, name, make_target)  # raises the clear error when the text is absent
        raise MissingData(f"{name} is not encoded with this BPE model yet ({index.name}); run `{make_target}`")
    record = json.loads(index.read_text())
    files = [root / f for f in record["files"]]
    if not all(f.is_file() for f in files):
        raise MissingData(f"the BPE ids of {name} named in {index.name} are gone from {root / CACHE}; run "
                          f"`{make_target}`")
    tables = [datasets.Dataset.from_file(str(f)).data.table for f in files]
    columns = {c: [chunk for t in tables for chunk in t.column(c).chunks] for c in tables[0].column_names}
    enc = Encoded(_ragged(pa.chunked_array(columns["src"], pa.list_(pa.int32()))),
                  _ragged(pa.chunked_array(columns["tgt"], pa.list_(pa.int32()))),
                  pa.chunked_array(columns["ref"], pa.string()).to_pylist() if "ref" in columns else None)
    if len(enc) != record["rows"]:
        raise MissingData(f"{index.name} names {record['rows']} pairs, its tables hold {len(enc)}; run `{make_target}`")
    if max_len is None:
        return enc
    src_len, tgt_len = enc.src.lengths(), enc.tgt.lengths()
    ok = (src_len <= max_len) & (tgt_len <= max_len) & (src_len > 0)
    if not bool(ok.all()):
        log.info("%s: dropped %d of %d pairs longer than %d BPE tokens", name, int((~ok).sum()), len(enc), max_len)
        enc = enc.subset(ok.nonzero().flatten())
    return enc


def pad_batch(seqs: list[list[int]], bos: bool, eos: bool) -> torch.Tensor:
    """(T, B) int64 with PAD after each sequence; optional BOS in front and EOS behind."""
    seqs = [([BOS] if bos else []) + s + ([EOS] if eos else []) for s in seqs]
    out = torch.full((max(len(s) for s in seqs), len(seqs)), PAD, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[: len(s), j] = torch.tensor(s, dtype=torch.long)
    return out
