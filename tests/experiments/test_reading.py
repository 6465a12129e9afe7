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
