"""Reading comprehension: the .question reader and its errors, top-k passages, the vocabulary, entity
permutation, the model's placement of norms, and end-to-end runs on fixture files."""

import logging

import pytest
import torch

from experiments.core.errors import MissingData
from experiments.core.training.run import run_training
from experiments.reading import data as D
from experiments.reading.model import AttentiveReader
from experiments.reading.questions import BadQuestionFile, format_question, parse_question, read_split
from rmsnorm import NormSpec
from tests.conftest import compose_cfg, prepare

STORY = "@entity1 met @entity2 in paris . the weather was cold . @entity2 sued @entity3 on monday .".split()  # noqa: SIM905
QUESTION = ["@placeholder", "sued", "@entity3"]


def _file(story=STORY, question=QUESTION, answer="@entity2"):
    return format_question("http://x", story, question, answer, {"@entity1": "Ann", "@entity2": "Bo"})


def test_a_question_file_parses_into_story_question_and_answer():
    q = parse_question(_file())
    assert q.story == STORY and q.question == QUESTION and q.answer == "@entity2"


@pytest.mark.parametrize("text, problem", [
    ("http://x\n\nonly a story\n", "found 2 block"),
    (_file(answer="Bo"), "not one @entityN"),
    (_file(answer="@entity9"), "does not occur in the story"),
    (_file(question=["who", "sued", "@entity3"]), "no @placeholder"),
])
def test_malformed_files_say_what_is_wrong(text, problem):
    with pytest.raises(BadQuestionFile, match=problem):
        parse_question(text)


def test_a_folder_skips_bad_files_with_a_count_and_an_empty_one_is_an_error(tmp_path, caplog):
    (tmp_path / "a.question").write_text(_file())
    (tmp_path / "b.question").write_text(_file(answer="@entity9"))
    caplog.set_level(logging.WARNING)
    questions, skipped = read_split(tmp_path)
    assert len(questions) == 1 and skipped == 1
    assert "b.question" in caplog.text and "skipped 1 of 2" in caplog.text
    with pytest.raises(MissingData, match="no .question files"):
        read_split(tmp_path / "empty")


def test_top_k_keeps_the_sentences_that_match_the_question_in_story_order():
    question = QUESTION
    assert D.select_sentences(STORY, question, 1) == ["@entity2", "sued", "@entity3", "on", "monday", "."]
    two = D.select_sentences(STORY, question, 2)
    assert two[0] == "@entity1" and two[-2:] == ["monday", "."]  # story order kept
    assert D.select_sentences(STORY, question, None) == STORY and D.select_sentences(STORY, question, 9) == STORY


def test_vocabulary_is_lower_cased_keeps_words_seen_twice_and_every_entity():
    qs = [parse_question(_file()), parse_question(_file(story=[*STORY, "Rare", "PARIS"]))]
    vocab = D.build_vocabulary(qs, min_count=2)
    assert vocab[:3] == ["<pad>", "<unk>", "@placeholder"]
    assert {"@entity1", "@entity2", "@entity3"} <= set(vocab) and "paris" in vocab and "rare" not in vocab


def smoke(data_dir, *extra):
    return ["task=reading", "preset=smoke", f"data_dir={data_dir}", "logger=none", "train.progress=false", *extra]


@pytest.fixture(scope="module")
def reading_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("reading")
    prepare(smoke(data_dir))
    return data_dir


def test_entities_are_permuted_per_minibatch_consistently_and_reproducibly(reading_data):
    from experiments.reading.task import ReadingTask

    cfg = compose_cfg(smoke(reading_data, "norm=rmsnorm"))
    from experiments.core.training.config import typed_task_config

    task = ReadingTask(typed_task_config(ReadingTask.Config, cfg.task), NormSpec("rmsnorm"), reading_data,
                       torch.device("cpu"), seed=0)
    first = list(task.batches(0, 0))
    again = list(task.batches(0, 1))
    torch.testing.assert_close(first[1][0], again[0][0])  # a resumed epoch sees the same permutation
    mapping = task._permutation(torch.Generator().manual_seed(3))
    ents = task.entity_ids
    assert sorted(mapping[ents].tolist()) == sorted(ents.tolist()) and not torch.equal(mapping[ents], ents)
    others = torch.ones(len(mapping), dtype=torch.bool)
    others[ents] = False
    assert torch.equal(mapping[others], torch.arange(len(mapping))[others])  # words other than entities stay
    plain, permuted = (task._batch(task.splits["train"], list(range(8)), m, torch.device("cpu"))
                       for m in (None, mapping))
    assert torch.equal(permuted[0], mapping[plain[0]]) and torch.equal(permuted[4], mapping[plain[4]])
    for passage, _, _, _, answers in first:
        for j in range(len(answers)):  # the answer is still an entity of its (permuted) passage
            assert int(answers[j]) in set(passage[:, j].tolist())
            assert int(answers[j]) in set(task.entity_ids.tolist())


def test_end_to_end_reports_errors_baselines_and_the_papers_time_unit(reading_data, tmp_path):
    summary = run_training(compose_cfg(smoke(reading_data, "norm=rmsnorm")), tmp_path)
    assert summary["task"] == "reading" and summary["primary_metric"] == "valid_error"
    m = summary["metrics"]
    assert {"valid_error", "test_error", "best_valid_error", "test_error_at_best_valid"} <= set(m)
    assert all(0.0 <= m[k] <= 1.0 for k in ("valid_error", "test_error"))
    assert 0.0 < summary["baselines"]["valid_error_most_frequent_entity"] <= 1.0
    assert summary["timing"]["sec_per_100_steps"] == pytest.approx(summary["timing"]["sec_per_1k_steps"] / 10)
    assert summary["data"]["train"]["questions"] == 60 and summary["data"]["corpus"] == "cnn"


def test_batchnorm_everywhere_also_normalises_the_projections():
    everywhere = AttentiveReader(20, 8, NormSpec("bn_everywhere"), project_norm=True)
    lstm_only = AttentiveReader(20, 8, NormSpec("batchnorm"), project_norm=False)
    assert everywhere.att_ctx.norm is not None and lstm_only.att_ctx.norm is None
    assert everywhere.passage.cells[0].per_step and lstm_only.passage.cells[0].per_step


def test_paper_preset_is_the_papers_setting():
    cfg = compose_cfg(["task=reading", "preset=paper", "norm=prmsnorm"])
    t = cfg.task
    assert (t.model.dim, t.batch_size, t.optim.lr, t.optim.clip_norm, t.model.dropout) == (240, 64, 8e-5, 10.0, 0.5)
    assert t.top_sentences == 4 and t.corpus == "cnn" and cfg.train.eval_every == 1000 and cfg.norm.p == 0.0625
    assert list(t.norms) == ["none", "bn_everywhere", "batchnorm", "layernorm", "rmsnorm", "prmsnorm"]


def test_missing_real_data_names_the_make_target(tmp_path, monkeypatch):
    from experiments.reading.task import ReadingTask

    tried = []
    monkeypatch.setattr(ReadingTask, "_download", staticmethod(lambda corpus, archive, target: tried.append(corpus)))
    with pytest.raises(MissingData, match="make data-reading"):
        run_training(compose_cfg(["task=reading", "preset=paper", f"data_dir={tmp_path}", "logger=none"]),
                     tmp_path / "run")
    with pytest.raises(MissingData, match="DMQA"):
        prepare(["task=reading", "preset=paper", f"data_dir={tmp_path}"])
    assert tried == ["cnn"]  # it tried to download, and said how to do it by hand when that gave nothing


def test_the_real_archive_is_unpacked_prepared_and_trained_on(tmp_path, monkeypatch):
    """The paper preset's path end to end: a cnn.tgz laid out as the DeepMind archive, no download."""
    import tarfile

    from experiments.reading.synthetic import write_cloze_folder
    from experiments.reading.task import ReadingTask

    monkeypatch.setattr(ReadingTask, "_download", staticmethod(lambda corpus, archive: None))
    write_cloze_folder(tmp_path / "src" / "cnn", {"train": 40, "valid": 10, "test": 10})
    (tmp_path / "src" / "cnn" / "questions" / "training" / "broken.question").write_text("http://x\n\nno blocks\n")
    data = tmp_path / "data"
    (data / "reading").mkdir(parents=True)
    with tarfile.open(data / "reading" / "cnn.tgz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cnn", arcname="cnn")
    overrides = ["task=reading", "preset=paper", f"data_dir={data}", "logger=none", "train.progress=false",
                 "task.model.dim=16", "task.batch_size=8", "train.max_steps=2", "train.eval_every=2"]
    prepare(overrides)
    summary = run_training(compose_cfg(overrides), tmp_path / "run")
    assert summary["data"]["train"] == {"questions": 40, "skipped_files": 1, "answer_cut_by_top": 0}
    assert summary["steps"] == 2 and "valid_error" in summary["metrics"]


# ---- upstream's choices under preset=paper (issue 23) ------------------------------------------------------------

UPSTREAM_MODEL = ("dq_square", "bias_after_norm", "backward_from_end")


def _batch(lengths, generator, vocab=30, steps=None):
    lengths = torch.tensor(lengths)
    mask = (torch.arange(steps or int(lengths.max())).unsqueeze(1) < lengths).float()
    return torch.randint(1, vocab, mask.shape, generator=generator) * mask.long(), mask


def test_paper_takes_upstreams_choices_and_demo_and_smoke_keep_their_own():
    paper = compose_cfg(["task=reading", "preset=paper"]).task
    assert all(paper.model[k] for k in UPSTREAM_MODEL) and paper.optim.clip == "upstream"
    assert paper.eval_batch_statistics and paper.eval_batch_size == paper.batch_size == 64
    for preset in ("demo", "smoke"):  # the model and training these presets were measured with
        t = compose_cfg(["task=reading", f"preset={preset}"]).task
        assert not any(t.model[k] for k in UPSTREAM_MODEL) and t.optim.clip == "global"
        assert not t.eval_batch_statistics and t.eval_batch_size == 128


def test_the_question_passage_similarity_is_square_and_orthogonal_times_0_05_as_upstream():
    d = 8
    torch.manual_seed(0)
    w = AttentiveReader(20, d, NormSpec("rmsnorm"), dq_square=True).dq.weight.detach()
    assert w.shape == (2 * d, 2 * d)  # upstream's ff_att_bi_dq: norm_weight(2d, 2d), an ortho_weight
    torch.testing.assert_close(w @ w.t(), 0.05**2 * torch.eye(2 * d), rtol=0, atol=1e-6)
    torch.testing.assert_close(w.t() @ w, 0.05**2 * torch.eye(2 * d), rtol=0, atol=1e-6)
    assert AttentiveReader(20, d, NormSpec("rmsnorm")).dq.weight.shape == (d, 2 * d)  # the demo's 2d -> d


def test_upstream_clipping_compares_the_norm_with_the_bound_squared_and_rescales_by_its_root():
    from experiments.core.training.stepping import clip_gradients

    def grads(*values):
        params = [torch.nn.Parameter(torch.zeros(2)) for _ in values]
        for p, v in zip(params, values, strict=True):
            p.grad = torch.tensor(v)
        return params

    below = grads([3.0, 0.0], [0.0, 0.0])  # norm 3: over the bound 2, under 2**2 = 4: left as it is
    clip_gradients(below, "upstream", 2.0)
    torch.testing.assert_close(below[0].grad, torch.tensor([3.0, 0.0]), rtol=0, atol=0)
    above = grads([6.0, 0.0], [0.0, 8.0])  # norm 10 > 4: g * 2 / sqrt(10 + 1e-8), norm 2 * sqrt(10)
    clip_gradients(above, "upstream", 2.0)
    factor = 2.0 / (10.0 + 1e-8) ** 0.5
    torch.testing.assert_close(above[0].grad, torch.tensor([6.0 * factor, 0.0]))
    torch.testing.assert_close(above[1].grad, torch.tensor([0.0, 8.0 * factor]))
    norm = torch.linalg.vector_norm(torch.cat([p.grad for p in above]))
    torch.testing.assert_close(norm, torch.tensor(2.0 * 10**0.5))  # not the bound 2: above it, as upstream


def test_bn_everywhere_adds_the_projection_bias_after_the_norm():
    after = AttentiveReader(20, 8, NormSpec("bn_everywhere"), project_norm=True, bias_after_norm=True)
    before = AttentiveReader(20, 8, NormSpec("bn_everywhere"), project_norm=True)
    assert after.att_ctx.linear.bias is None and after.att_ctx.norm.bias is not None
    assert after.att_q.linear.bias is None and after.att_q.norm.bias is None  # no bias upstream either
    assert before.att_ctx.linear.bias is not None and before.att_ctx.norm.bias is None
    with torch.no_grad():
        after.att_ctx.norm.bias.fill_(0.5)
    x, mask = torch.randn(5, 3, 16), torch.ones(5, 3)
    y = after.att_ctx(x, mask)
    torch.testing.assert_close(y.mean((0, 1)), torch.full((8,), 0.5), rtol=0, atol=1e-5)  # the shift survives


def test_the_backward_lstm_counts_steps_from_each_sequences_end():
    from experiments.reading.model import realign_index

    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).float()  # lengths 3, 2, 1
    assert realign_index(mask).tolist() == [[2, 1, 0], [1, 0, 0], [0, 1, 0]]
    g = torch.Generator().manual_seed(0)
    a, m = _batch([6, 3, 4, 1], g)
    b = a.clone()
    last = m.sum(0).long() - 1
    others = torch.ones_like(m, dtype=torch.bool)
    others[last, torch.arange(4)] = False
    b[others & (m > 0)] = (b[others & (m > 0)] % 29) + 1  # every token but each sequence's last one changes
    for norm, same_at_last in (("batchnorm", True), ("rmsnorm", False)):
        torch.manual_seed(0)
        model = AttentiveReader(30, 8, NormSpec(norm), dropout=0.0, backward_from_end=True)
        plain = AttentiveReader(30, 8, NormSpec(norm), dropout=0.0)
        plain.load_state_dict(model.state_dict())
        outs = {}
        for name, net in (("from_end", model), ("plain", plain)):
            for key, ids in (("a", a), ("b", b)):
                h, _ = net._encode(net.passage, net.embedding(ids), m)
                outs[name, key] = h[last, torch.arange(4), 8:]  # the backward half at each last token
        if same_at_last:  # step 0 of the backward LSTM, its batch norm's statistics too, sees only last tokens
            torch.testing.assert_close(outs["from_end", "a"], outs["from_end", "b"])
            assert not torch.allclose(outs["plain", "a"], outs["plain", "b"])  # statistics by absolute position
        else:  # without per-step statistics both orders give the same outputs
            torch.testing.assert_close(outs["from_end", "a"], outs["plain", "a"])


def test_evaluation_with_batch_statistics_matches_training_mode_and_keeps_the_running_estimates():
    from experiments.reading.model import batch_statistics

    g = torch.Generator().manual_seed(1)
    (p, pm), (q, qm) = _batch([5, 2, 4], g), _batch([3, 3, 1], g)
    torch.manual_seed(0)
    model = AttentiveReader(30, 8, NormSpec("bn_everywhere"), project_norm=True, dropout=0.0).eval()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad(), batch_statistics(model):
        own = model(p, pm, q, qm)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in running.items())
    with torch.no_grad():
        estimates = model(p, pm, q, qm)
        trained = model.train()(p, pm, q, qm)
    torch.testing.assert_close(own, trained)
    assert not torch.allclose(own, estimates)


def test_smoke_runs_with_every_upstream_choice(reading_data, tmp_path):
    upstream = [f"task.model.{k}=true" for k in UPSTREAM_MODEL]
    summary = run_training(compose_cfg(smoke(reading_data, "norm=bn_everywhere", "task.optim.clip=upstream",
                                             "task.eval_batch_statistics=true", *upstream)), tmp_path)
    assert summary["steps"] == 4 and 0.0 <= summary["metrics"]["valid_error"] <= 1.0
