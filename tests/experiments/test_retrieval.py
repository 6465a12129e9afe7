"""Image-caption retrieval: ranks and recalls on hand-built score matrices, the order-violation loss, the
loader's errors, and end-to-end runs on fixture files."""

import numpy as np
import pytest
import torch

from experiments.core.errors import MissingData
from experiments.core.training.run import run_training
from experiments.retrieval import data as D
from experiments.retrieval.metrics import order_violation, ranks_from_scores, retrieval_metrics
from experiments.retrieval.model import contrastive_loss, order_penalty_matrix
from tests.conftest import compose_cfg, prepare


def _scores_with_known_ranks():
    """3 images, 15 captions; lower is better. Built so that each query's rank is known by hand."""
    s = torch.full((15, 3), 10.0)
    for c in range(15):
        s[c, c // 5] = 1.0  # every caption prefers its own image ...
    s[5, 0] = 0.5  # ... except caption 5 (image 1's), which prefers image 0: its image rank is 2
    s[10:15, 2] = 20.0  # image 2's captions rank image 2 last (rank 3); image 2 finds them last among 15
    return s


def test_ranks_in_both_directions_on_a_hand_built_matrix():
    s = _scores_with_known_ranks()
    caption_ranks, image_ranks = ranks_from_scores(lambda a, b: s[a:b], 3, chunk=4)
    want_image = [1] * 5 + [2, 1, 1, 1, 1] + [3] * 5
    assert image_ranks.tolist() == want_image
    # image 0: its own captions score 1.0 but caption 5 scores 0.5: rank 2; image 1: rank 1; image 2: its
    # captions score 20, every other caption 10: 10 better -> rank 11
    assert caption_ranks.tolist() == [2, 1, 11]
    m = retrieval_metrics(lambda a, b: s[a:b], 3)
    assert m["image_r1"] == pytest.approx(100 * 9 / 15) and m["image_r5"] == 100.0
    assert m["caption_r1"] == pytest.approx(100 / 3) and m["caption_r10"] == pytest.approx(200 / 3)
    assert m["caption_medr"] == 2 and m["caption_meanr"] == pytest.approx(14 / 3)
    assert m["image_rsum"] == pytest.approx(m["image_r1"] + m["image_r5"] + m["image_r10"])


@pytest.mark.parametrize("chunk_elements", [5, 40, 700, None])  # one value a tile .. the whole matrix at once
def test_order_violation_in_tiles_equals_the_formula(chunk_elements):
    g = torch.Generator().manual_seed(0)
    s, v = torch.rand(130, 5, generator=g), torch.rand(9, 5, generator=g)  # 130 captions: more than one tile row
    want = torch.tensor([[float(((s[i] - v[j]).clamp(min=0) ** 2).sum()) for j in range(9)] for i in range(130)])
    torch.testing.assert_close(order_violation(s, v, chunk_elements=chunk_elements), want)
    torch.testing.assert_close(order_penalty_matrix(s[:9], v), want[:9])


def test_contrastive_loss_is_the_sum_over_in_batch_negatives_both_ways():
    g = torch.Generator().manual_seed(1)
    s, v = torch.rand(4, 3, generator=g), torch.rand(4, 3, generator=g)
    e, margin, total = order_penalty_matrix(s, v), 0.05, 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                total += max(0.0, margin + e[i, i] - e[i, j]) + max(0.0, margin + e[j, j] - e[i, j])
    assert float(contrastive_loss(s, v, margin)) == pytest.approx(float(total), rel=1e-6)


def _write(root, captions, features):
    D.caption_path(root, "train").parent.mkdir(parents=True, exist_ok=True)
    D.caption_path(root, "train").write_text("\n".join(captions) + "\n")
    D.feature_path(root, "train").parent.mkdir(parents=True, exist_ok=True)
    np.save(D.feature_path(root, "train"), features)


@pytest.mark.parametrize("captions, rows, width, problem", [
    (["a b"] * 10, 3, 4, "holds 3 feature rows but .* has 10 captions, i.e. 2 images x 5"),
    (["a b"] * 4 + [""] + ["a"] * 5, 2, 4, "line 5: an empty caption"),
    (["a b"] * 10, 2, 7, r"shape \(2, 7\); expected \(images, 4\)"),
])
def test_bad_files_are_errors_naming_the_file_and_the_numbers(tmp_path, captions, rows, width, problem):
    _write(tmp_path, captions, np.zeros((rows, width), dtype=np.float32))
    with pytest.raises(MissingData, match=problem):
        caps = D.read_captions(tmp_path, "train", "make data-retrieval")
        D.read_features(tmp_path, "train", len(caps) // 5, 4, "make data-retrieval")
    with pytest.raises(MissingData, match="no captions for the dev split .*val.txt"):
        D.read_captions(tmp_path, "dev", "make data-retrieval")


def test_captions_are_split_at_whitespace_with_their_case_kept_as_upstream(tmp_path):
    # order-embedding reads the pre-tokenised lines as they are and splits them (vocab.py:14, datasource.py:55)
    _write(tmp_path, ["A man  rides a Horse ."] * 5, np.zeros((1, 4), dtype=np.float32))
    assert D.read_captions(tmp_path, "train", "make data-retrieval")[0] == ["A", "man", "rides", "a", "Horse", "."]


def test_captions_end_with_eos_and_batch_with_padding():
    vocab = D.build_vocabulary([["a", "dog"], ["a", "cat"], ["a", "dog"]], min_count=1)
    assert vocab[:4] == ["<pad>", "<unk>", "<eos>", "a"]  # most frequent first
    caps = D.encode([["a", "dog"], ["a", "zebra", "cat"]], vocab)
    words, mask = caps.padded(torch.tensor([1, 0]))
    assert words[:, 0].tolist() == [vocab.index("a"), D.UNK, vocab.index("cat"), D.EOS]
    assert words[:, 1].tolist() == [vocab.index("a"), vocab.index("dog"), D.EOS, D.PAD]
    assert mask[:, 1].tolist() == [1, 1, 1, 0]


def smoke(data_dir, *extra):
    return ["task=retrieval", "preset=smoke", f"data_dir={data_dir}", "logger=none", "train.progress=false", *extra]


def test_end_to_end_reports_recalls_on_folds_chance_and_the_papers_time_unit(tmp_path):
    prepare(smoke(tmp_path / "data"))
    summary = run_training(compose_cfg(smoke(tmp_path / "data", "norm=rmsnorm")), tmp_path / "run")
    m = summary["metrics"]
    assert summary["primary_metric"] == "caption_r1" and not summary["lower_is_better"]
    for k in ("caption_r1", "caption_r5", "caption_r10", "caption_meanr", "image_r1", "image_meanr",
              "test5k_caption_r1", "dev_image_rsum", "best_dev_image_rsum"):
        assert k in m, k
    assert 0 <= m["caption_r1"] <= 100 and m["caption_meanr"] >= 1
    assert summary["baselines"]["caption_r1_chance"] == pytest.approx(0.1)  # folds of 10 images
    assert summary["timing"]["sec_per_100_steps"] == pytest.approx(summary["timing"]["sec_per_1k_steps"] / 10)
    assert summary["data"]["train_images"] == 40
    # without the whole-set ranking (the demo's setting): the same fold metrics, no test5k_
    folds_only = run_training(compose_cfg(smoke(tmp_path / "data", "norm=rmsnorm", "task.whole_test=false")),
                              tmp_path / "run-folds")["metrics"]
    assert not any(k.startswith("test5k_") for k in folds_only)
    assert {k: v for k, v in m.items() if k.startswith(("caption_", "image_"))} == \
        {k: v for k, v in folds_only.items() if k.startswith(("caption_", "image_"))}


def test_paper_preset_is_the_papers_setting():
    cfg = compose_cfg(["task=retrieval", "preset=paper", "norm=rmsnorm"])
    t = cfg.task
    assert (t.model.word_dim, t.model.dim, t.model.image_dim, t.batch_size) == (300, 1024, 4096, 128)
    assert (t.optim.lr, t.optim.clip_norm, t.optim.margin) == (1e-3, 2.0, 0.05)
    assert cfg.train.epochs == 100 and cfg.train.eval_every == 300 and t.dev_images == 1000
    assert list(t.norms) == ["none", "layernorm", "rmsnorm", "prmsnorm"]
