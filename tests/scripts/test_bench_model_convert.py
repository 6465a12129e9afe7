"""scripts/bench_model.py --convert-exact: the exact conversion's report beside the timings (the timings
themselves are not run here)."""

import json

import torch

from scripts.bench_model import exact_conversion


def _small_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)


def test_the_exact_conversion_report_and_its_record():
    text, record = exact_conversion(_small_vit, torch.randn(1, 3, 32, 32))
    assert text.startswith("Exact conversion") and "the same function" in text
    assert len(record["converted"]) == 5 and record["max_abs_diff"] <= record["tolerance"]
    assert "encoder.ln.weight" in record["dropped_keys"]
    json.dumps(record)  # what the .json holds


def test_a_refused_model_gives_the_refusal_line():
    def post_ln():
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=False)
        return torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    text, record = exact_conversion(post_ln, torch.randn(1, 4, 16))
    assert "refused: layers.0.norm1" in text and record["refused"].startswith("layers.0.norm1")
