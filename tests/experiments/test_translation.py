"""Translation: the loader's errors, beam search on an overfitted model,
and end-to-end runs for every norm."""

import json
import logging
import math

import pytest
import torch

from experiments.core.data.batching import bucketed_batches, count_batches
from experiments.core.errors import MissingData, UserError
from experiments.core.records import read_metrics
from experiments.core.training.run import run_training
from experiments.translation import data as D
from experiments.translation.beam import beam_search
from experiments.translation.model import RNNSearch
from experiments.translation.synthetic import write_synthetic
from experiments.translation.task import bleu
from rmsnorm import NormSpec
from tests.conftest import Crash, compose_cfg, patch_train_step, prepare, run_script

NORMS = ["none", "layernorm", "l2norm", "rmsnorm", "prmsnorm"]


# ---- data --------------------------------------------------------------------------------------------------


def _records(pairs):
    return [{"translation": {"de": de, "en": en}} for en, de in pairs]


def test_reader_reads_the_hubs_parquet_schema_and_json_lines_through_datasets(tmp_path):
    pairs = [("a house.", "ein haus."), (" yes. ", "ja.")]
    D.write_parquet(_records(pairs), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(pairs)))
    for name in ("a.parquet", "b.jsonl"):
        text = D.read_text(tmp_path, name, "en", "de")
        assert D.sentences(text, "en", "de", name) == (["a house.", "yes."], ["ein haus.", "ja."])
    assert D.read_text(tmp_path, "a.parquet", "en", "de").data.schema == D.hub_schema()  # the hub's layout
    # `datasets`' cache inside the task's folder: the text as Arrow, nothing under ~/.cache
    assert list((tmp_path / D.CACHE).rglob("*.arrow"))


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(MissingData, match="no translation data at .*absent.parquet; run `make data-translation`"):
        D.read_text(tmp_path, "absent.parquet", "en", "de")
    with pytest.raises(MissingData, match="no translation data at .*; run `make data-translation`"):
        D.read_text(tmp_path, "wmt14/de-en/train-*.parquet", "en", "de")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MissingData, match="holds no sentence pairs"):
        D.read_text(tmp_path, "empty.jsonl", "en", "de")
    D.write_parquet(_records([("a house.", "")]), tmp_path / "half.parquet")
    text = D.read_text(tmp_path, "half.parquet", "en", "de")
    with pytest.raises(MissingData, match="half.parquet, record 1: .*both sides non-empty"):
        D.sentences(text, "en", "de", "half.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a house."]}), tmp_path / "other.parquet")
    with pytest.raises(MissingData, match="other.parquet: expected records .*the hub's WMT schema"):
        D.read_text(tmp_path, "other.parquet", "en", "de")
    with pytest.raises(MissingData, match="no BPE model"):
        D.load_bpe(tmp_path / "bpe.model")
    (tmp_path / "bad.model").write_bytes(b"garbage")
    with pytest.raises(MissingData, match="corrupt"):
        D.load_bpe(tmp_path / "bad.model")


def test_a_bpe_model_of_another_size_is_learnt_again_and_never_trained_on(tmp_path):
    """A folder prepared under an older preset's task.bpe_vocab_size: preparing again relearns the model, and a
    run refuses it meanwhile, so no run trains on pieces its config does not name."""
    overrides = ["task=translation", "preset=smoke", f"data_dir={tmp_path}", "logger=none"]
    root = prepare([*overrides, "task.bpe_vocab_size=90"])
    assert D.load_bpe(root / "bpe.model").get_piece_size() == 90
    with pytest.raises(UserError, match="has 90 pieces but task.bpe_vocab_size=100; run `make"):
        run_training(compose_cfg([*overrides, "task.bpe_vocab_size=100"]), tmp_path / "run")
    prepare([*overrides, "task.bpe_vocab_size=100"])
    assert D.load_bpe(root / "bpe.model").get_piece_size() == 100
    with pytest.raises(MissingData, match="yields only .* pieces, not 100000; set task.bpe_vocab_size="):
        D.train_bpe(["a b c.", "b c d."], tmp_path / "tiny.model", 100_000)
    assert not (tmp_path / "tiny.model").exists()


def smoke_generator(sizes: dict):
    """The smoke preset's generated task (its easy difficulty), at other sizes."""
    gen = compose_cfg(["task=translation", "preset=smoke"]).task.synthetic
    gen.sizes = sizes
    return gen


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    files = {"train": "train.parquet", "dev": "dev.parquet", "test": "test.parquet"}
    write_synthetic(root, smoke_generator({"train": 400, "dev": 20, "test": 20}), files)
    sources, targets = D.sentences(D.read_text(root, "train.parquet", "en", "de"), "en", "de", "train")
    D.train_bpe([s for pair in zip(sources, targets, strict=True) for s in pair], root / "bpe.model", 120)
    return root


def _encode(root, name, with_refs=True):
    sp = D.load_bpe(root / "bpe.model")
    D.encode_split(root, name, D.read_text(root, name, "en", "de"), sp, "en", "de", with_refs=with_refs)
    return sp


def test_long_pairs_are_filtered_with_a_count(toy_corpus, caplog):
    caplog.set_level(logging.INFO)
    sp = _encode(toy_corpus, "train.parquet")
    full = D.load_encoded(toy_corpus, "train.parquet", sp, "en", "de", None, "make data-translation")
    cut = D.load_encoded(toy_corpus, "train.parquet", sp, "en", "de", 16, "make data-translation")
    dropped = int(((full.src.lengths() > 16) | (full.tgt.lengths() > 16)).sum())
    assert 0 < dropped < len(full) and len(cut) == len(full) - dropped
    assert f"dropped {dropped} of {len(full)} pairs longer than 16" in caplog.text
    kept = ((full.src.lengths() <= 16) & (full.tgt.lengths() <= 16)).nonzero().flatten().tolist()
    for i in (kept[0], kept[len(kept) // 2], kept[-1]):  # the flat subset keeps pairs intact
        j = kept.index(i)
        assert cut.pair(j) == full.pair(i) and cut.refs[j] == full.refs[i]
        assert sp.decode(cut.pair(j)[1]) == cut.refs[j]


def test_ids_through_several_map_processes_are_those_of_one(toy_corpus, tmp_path, monkeypatch):
    """`Dataset.map(num_proc=...)` on a big set: shards in order, the same ids as in one process."""
    sp = _encode(toy_corpus, "train.parquet", with_refs=False)
    one = D.load_encoded(toy_corpus, "train.parquet", sp, "en", "de", None, "-")
    for name in ("train.parquet", "bpe.model"):
        (tmp_path / name).write_bytes((toy_corpus / name).read_bytes())
    monkeypatch.setattr(D, "ROWS_PER_WORKER", 150)
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    index = D.index_path(tmp_path, "train.parquet", sp, "en", "de")
    _encode(tmp_path, "train.parquet", with_refs=False)
    assert len(json.loads(index.read_text())["files"]) == 2  # one Arrow file a process
    two = D.load_encoded(tmp_path, "train.parquet", sp, "en", "de", None, "-")
    for side in ("src", "tgt"):
        assert torch.equal(getattr(one, side).flat, getattr(two, side).flat)
        assert torch.equal(getattr(one, side).offsets, getattr(two, side).offsets)


def test_loading_reads_only_and_names_the_command(toy_corpus, tmp_path):
    sp = D.load_bpe(toy_corpus / "bpe.model")
    (tmp_path / "new.parquet").write_bytes((toy_corpus / "dev.parquet").read_bytes())
    with pytest.raises(MissingData, match="not encoded with this BPE model yet.*run `python scripts/prepare.py"):
        D.load_encoded(tmp_path, "new.parquet", sp, "en", "de", None, "python scripts/prepare.py task=translation")
    assert [p.name for p in tmp_path.iterdir()] == ["new.parquet"]


def test_bucketed_batches_cover_every_pair_once():
    lengths = [i % 17 for i in range(1000)]
    batches = bucketed_batches(lengths, 80, torch.Generator().manual_seed(0), pool=4)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 80 for b in batches)
    assert len(batches) == count_batches(1000, 80, pool=4)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 8  # similar lengths within a batch


# ---- model, beam search, BLEU -------------------------------------------------------------------------------


def test_overfit_a_handful_of_pairs_and_decode_them_with_beam_search(toy_corpus):
    torch.manual_seed(0)
    sp = _encode(toy_corpus, "dev.parquet")
    enc = D.load_encoded(toy_corpus, "dev.parquet", sp, "en", "de", None, "-").subset(torch.arange(8))
    pairs = [enc.pair(i) for i in range(len(enc))]
    src = D.pad_batch([s for s, _ in pairs], bos=False, eos=True)
    tgt = D.pad_batch([t for _, t in pairs], bos=True, eos=True)
    mask = (src != D.PAD).float()
    vocab = sp.get_piece_size()
    model = RNNSearch(vocab, vocab, 32, 32, NormSpec("rmsnorm"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # 200 steps: at 120 the score sat at 88-92 and moved with the recurrent layers' float rounding
    for _ in range(200):
        logits = model(src, mask, tgt[:-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[1:].flatten(), ignore_index=D.PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hyps = sp.decode(beam_search(model, src, mask, beam=4, max_len=40))
    score, signature = bleu(hyps, enc.refs)
    assert score.score > 90, (hyps, enc.refs)
    assert "case:mixed" in signature and "tok:13a" in signature and "smooth:exp" in signature


def test_beam_search_returns_the_most_likely_sequence_of_a_known_model():
    """A fake model whose next-token distribution is fixed: beam 2 must find the path greedy misses."""

    class Fixed(torch.nn.Module):
        def encode(self, src, mask):
            n = src.shape[1]
            return torch.zeros(n, 1), torch.zeros(1, n, 1), torch.zeros(1, n, 1)

        def step_log_probs(self, prev, state, ctx, pctx, mask):
            # vocab: 0 pad, 1 unk, 2 bos, 3 eos, 4 a, 5 b. From BOS: a 0.6, b 0.4; after a: eos 0.5, b 0.3,
            # a 0.2; after b: eos 1.0. Greedy: a (0.6) then eos (0.5) = 0.30; the best is b eos = 0.40
            probs = torch.full((prev.shape[0], 6), 1e-9)
            probs[prev == D.BOS, 4], probs[prev == D.BOS, 5] = 0.6, 0.4
            probs[prev == 4, D.EOS], probs[prev == 4, 5], probs[prev == 4, 4] = 0.5, 0.3, 0.2
            probs[prev == 5, D.EOS] = 1.0
            probs[prev == 3, D.EOS] = 1.0
            return probs.log(), state

    src = torch.ones(1, 1, dtype=torch.long)
    assert beam_search(Fixed(), src, torch.ones(1, 1), beam=1, max_len=5, alpha=0.0) == [[4]]
    assert beam_search(Fixed(), src, torch.ones(1, 1), beam=2, max_len=5, alpha=0.0) == [[5]]


@pytest.mark.parametrize("kind", ["rnnsearch", "transformer"])
def test_beam_search_decodes_each_sentence_of_a_batch_as_it_would_alone(kind):
    """Sentences whose beams have all ended leave the batch: what the others get must not change."""
    from experiments.transformer.model import Transformer

    torch.manual_seed(0)
    vocab = 12
    if kind == "rnnsearch":
        model = RNNSearch(vocab, vocab, 16, 16, NormSpec("rmsnorm"))
    else:
        model = Transformer(vocab, 16, 2, 32, 1, 2, 0.0, NormSpec("rmsnorm"), "post")
    model = model.double().eval()
    lengths = [3, 7, 5, 9, 4, 6, 8, 2]
    src = torch.full((max(lengths), len(lengths)), D.PAD)
    for i, n in enumerate(lengths):
        src[:n, i] = torch.randint(4, vocab, (n,))
    mask = (src != D.PAD).double()
    sizes = []
    step = model.step_log_probs

    def ending_by_source_length(prev, state, ctx, pctx, src_mask):
        """The model's step, with EOS made certain from the source's length on: sentences end at scattered
        steps (decided row by row, as the model's own distributions are)."""
        sizes.append(len(prev))
        log_probs, state = step(prev, state, ctx, pctx, src_mask)
        due = (len(sizes) >= src_mask.sum(0)).double().unsqueeze(1)
        return log_probs + 30.0 * due * (torch.arange(vocab) == D.EOS), state

    model.step_log_probs = ending_by_source_length

    def search(src, mask):
        sizes.clear()
        return beam_search(model, src, mask, beam=3, max_len=14, alpha=1.0)

    batched = search(src, mask)
    assert sizes[0] > sizes[-1] > 0  # sentences did leave the batch before the last step
    alone = [search(src[:n, i:i + 1], mask[:n, i:i + 1])[0] for i, n in enumerate(lengths)]
    assert batched == alone
    assert len({len(ids) for ids in alone}) > 2  # hypotheses of several lengths: the test means something


# ---- end to end ----------------------------------------------------------------------------------------------


def tiny_translation(data_dir, *extra):
    return ["task=translation", "preset=smoke", f"data_dir={data_dir}", "logger=none", "train.progress=false",
            "train.max_steps=6", "train.eval_every=3", "train.ckpt_every=3", *extra]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    prepare(tiny_translation(data_dir))
    return data_dir


@pytest.mark.parametrize("norm", NORMS)
def test_end_to_end_every_norm(smoke_data, tmp_path, norm):
    summary = run_training(compose_cfg(tiny_translation(smoke_data, f"norm={norm}")), tmp_path / "run")
    assert summary["task"] == "translation" and summary["norm"] == norm and summary["steps"] == 6
    assert set(summary["metrics"]) == {"dev_bleu", "test_bleu", "dev_bleu_bp", "test_bleu_bp"}
    assert all(0.0 <= v <= 100.0 for v in summary["metrics"].values())
    assert all(0.0 <= summary["metrics"][f"{s}_bleu_bp"] <= 1.0 for s in ("dev", "test"))
    assert summary["bleu_signature"].startswith("nrefs:1|case:mixed")
    timing = summary["timing"]
    assert timing["timed_steps"] == 5
    # the wall clock holds the evaluations the training clock pauses out, and the training clock the steps
    assert timing["wall_sec_per_1k_steps"] > timing["sec_per_1k_steps"] >= timing["step_sec_per_1k_steps"] > 0
    # Nematus' model selection: the scores of the evaluation with the best dev BLEU (at step 3 or 6)
    evals = [r for r in read_metrics(tmp_path / "run") if "eval/dev_bleu" in r]
    best = max(evals, key=lambda r: r["eval/dev_bleu"])
    assert summary["at_best_dev_bleu"] == {"step": best["step"], **{k: best[f"eval/{k}"] for k in (
        "dev_bleu", "test_bleu", "dev_bleu_bp", "test_bleu_bp")}}
    pre = summary["preactivation"]  # Table 5's probe
    assert pre["set"] == "dev" and set(pre) == {"set", "1", "2", "3", "4", "all"}
    assert all(math.isfinite(pre[k][0]) and pre[k][1] >= 0 for k in ("1", "2", "3", "4", "all"))


def test_preactivation_probe_reads_the_normalised_hidden_side(smoke_data):
    # with unit gains every RMSNorm'd row has mean square 1, so pooled over rows mean^2 + std^2 = 1 exactly;
    from experiments.core.training.run import build_task
    from experiments.translation.probe import preactivation_stats

    stats = {}
    for norm in ("rmsnorm", "none"):
        task = build_task(compose_cfg(tiny_translation(smoke_data, f"norm={norm}")), torch.device("cpu"))
        stats[norm] = preactivation_stats(task.model, task.eval_sets["dev"], torch.device("cpu"))
    for key in ("1", "2", "all"):
        mean, std = stats["rmsnorm"][key]
        assert mean**2 + std**2 == pytest.approx(1.0, rel=1e-4)
    # untrained, the states are small (N(0, 0.01) weights), and so is U h without a norm
    assert 0 < stats["none"]["all"][1] < 0.1


def test_init_mean_moves_the_centre_of_the_normal_init_only():
    from experiments.translation.model import RNNSearch
    from rmsnorm import NormSpec

    model = RNNSearch(50, 50, 16, 32, NormSpec("rmsnorm"), init_mean=0.2)
    assert model.out_proj.weight.mean().item() == pytest.approx(0.2, abs=0.01)
    assert model.cell1.weight_ih.mean().item() == pytest.approx(0.2, abs=0.01)
    block = model.cell1.weight_hh.data[:32]  # orthogonal, untouched
    torch.testing.assert_close(block @ block.T, torch.eye(32), atol=1e-5, rtol=0)


def test_paper_preset_is_the_papers_setting():
    cfg = compose_cfg(["task=translation", "preset=paper", "norm=prmsnorm"])
    t = cfg.task
    assert (t.model.emb, t.model.hidden, t.max_len, t.batch_size) == (512, 1024, 80, 80)
    assert t.optim.lr == 1e-4 and t.optim.label_smoothing == 0.1 and t.bpe_vocab_size == 32000
    assert cfg.norm.p == 0.0625 and cfg.train.eval_every == 30000
    assert set(t.files) == {"train", "dev", "test14", "test17"} and t.primary_metric == "test14_bleu"
    assert set(t.norms) == set(NORMS)


def test_missing_real_data_names_the_make_target(tmp_path):
    with pytest.raises(MissingData, match="make data-translation"):
        run_training(compose_cfg(["task=translation", "preset=paper", f"data_dir={tmp_path}", "logger=none"]),
                     tmp_path / "run")


def test_prepare_script_learns_bpe_from_local_files_and_encodes_them(tmp_path):
    """Files of one's own (not the hub's) in the WMT schema, named by task.files: read as they are, no download."""
    root = tmp_path / "translation"
    files = {"train": "train.parquet", "dev": "newstest2013.parquet", "test14": "newstest2014.parquet",
             "test17": "newstest2017.parquet"}
    write_synthetic(root, smoke_generator({"train": 300, "dev": 10, "test14": 10, "test17": 10}), files)
    r = run_script("scripts/prepare.py", "task=translation", "preset=paper", f"data_dir={tmp_path}",
                   "task.bpe_vocab_size=100", *(f"task.files.{k}={v}" for k, v in files.items()))
    assert r.returncode == 0, r.stderr[-2000:]
    sp = D.load_bpe(root / "bpe.model")
    assert sp.decode(sp.encode("the dog sees the house.")) == "the dog sees the house."
    for split, file in files.items():
        enc = D.load_encoded(root, file, sp, "en", "de", None, "-")
        assert len(enc) == (300 if split == "train" else 10) and (enc.refs is None) == (split == "train")


def test_two_prepare_jobs_on_one_folder_do_not_corrupt_it(tmp_path):
    """What a parallel sweep does: both jobs succeed and leave one valid set of files."""
    import subprocess
    import sys

    from tests.conftest import REPO

    args = [sys.executable, "scripts/prepare.py", "task=translation", "preset=smoke", f"data_dir={tmp_path}"]
    jobs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-2000:]
    root = tmp_path / "translation-smoke"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".bpe-")]
    summary = run_training(compose_cfg(tiny_translation(tmp_path, "norm=rmsnorm", "train.max_steps=2")),
                           tmp_path / "run")
    assert summary["data"]["train_pairs"] > 0


@pytest.mark.slow
def test_demo_preset_translates_the_generated_task(tmp_path):
    """The demo's own setting for one norm: BLEU far above 0 after its 400 steps."""
    overrides = ["task=translation", "norm=rmsnorm", "preset=demo", f"data_dir={tmp_path / 'data'}", "logger=none",
                 "train.progress=false"]
    prepare(overrides)
    summary = run_training(compose_cfg(overrides), tmp_path / "run")
    assert summary["metrics"]["test_bleu"] > 80


def test_translation_resumes_after_a_crash_to_the_same_result(smoke_data, tmp_path, monkeypatch):
    from experiments.translation.task import TranslationTask

    overrides = tiny_translation(smoke_data, "norm=rmsnorm", "train.max_steps=8", "train.ckpt_every=4",
                                 "train.eval_every=8")
    whole = run_training(compose_cfg(overrides), tmp_path / "whole")
    def crash():
        raise Crash("killed")

    real_step = patch_train_step(monkeypatch, TranslationTask, 6, before=crash)
    with pytest.raises(Crash, match="killed"):
        run_training(compose_cfg(overrides), tmp_path / "split")
    monkeypatch.setattr(TranslationTask, "train_step", real_step)
    resumed = run_training(compose_cfg([*overrides, "resume=true"]), tmp_path / "split")
    assert resumed["metrics"] == whole["metrics"]
    final = lambda d: torch.load(d / "checkpoint.pt", weights_only=False)["task"]["model"]  # noqa: E731
    for name, value in final(tmp_path / "whole").items():
        torch.testing.assert_close(final(tmp_path / "split")[name], value)


def test_nematus_loss_sums_each_sentence_and_averages_over_sentences(smoke_data):
    """task.optim.loss=sentence_sum (Nematus, the paper preset's) is the token mean times the batch's target
    tokens per sentence: the gradient the clip at 1.0 sees is that much larger."""
    from experiments.core.training.run import build_task

    losses = {}
    for kind in ("sentence_sum", "token_mean"):
        torch.manual_seed(0)
        task = build_task(compose_cfg(tiny_translation(smoke_data, "norm=rmsnorm", f"task.optim.loss={kind}")),
                          torch.device("cpu"))
        batch = next(iter(task.batches(0, 0)))
        losses[kind] = task.train_step(batch).item()
    tokens_per_sentence = (batch[3] != D.PAD).sum().item() / batch[3].shape[1]
    assert tokens_per_sentence > 2
    assert losses["sentence_sum"] == pytest.approx(losses["token_mean"] * tokens_per_sentence, rel=1e-5)
