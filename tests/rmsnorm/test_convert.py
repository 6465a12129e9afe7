"""convert_exact: a pre-LN model's LayerNorms replaced by RMSNorms with its function unchanged (the stream's writes
centred, each norm's gain and bias folded into the linears that read it), read off the model's exported graph;
what it cannot prove exact, refused with one line naming the module."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import VisionTransformer

from rmsnorm import NotConvertible, RMSNorm, convert_exact
from rmsnorm.convert import CentredEmbedding

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values for every parameter, the norms' gains and biases, class token and position tables too:
    fresh norms have gain 1 and bias 0 and torchvision's ViT head starts at 0, which would hide the folding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if p.dim() == 1 else 1.0 / math.sqrt(p.shape[-1] if p.dim() == 2 else p[0].numel())
            shift = 1.0 if p.dim() == 1 and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * scale + shift)
    return model


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(*inputs)


def _close(want, got, dtype) -> tuple[bool, float]:
    """Equal up to the dtype's rounding, relative to the output's scale (1e-5 for float32, 1e-10 for float64)."""
    diff = (want.double() - got.double()).abs().max().item()
    return diff <= TOLERANCE[dtype] * max(1.0, want.abs().max().item()), diff


class Block(nn.Module):
    """A GPT-style pre-LN block: causal self-attention, then an MLP (its first linear without bias); `tail`, a
    module after the MLP's output linear (the refusal's case)."""

    def __init__(self, d, heads, tail: nn.Module | None = None):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d)
        self.tail = tail or nn.Identity()

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        x = x + self.proj(y)
        return x + self.tail(self.out(F.gelu(self.fc(self.ln2(x)))))


class TinyGPT(nn.Module):
    """A decoder with its head tied to the token embedding."""

    def __init__(self, vocab=50, d=16, heads=2, layers=2, length=8, tail: nn.Module | None = None):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.blocks = nn.ModuleList(Block(d, heads, tail) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _gpt(dtype=torch.float32, **kwargs):
    return _randomise(TinyGPT(**kwargs)).to(dtype)


def _encoder(norm_first=True, dtype=torch.float32):
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True, norm_first=norm_first, bias=True)
    return _randomise(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)).to(dtype)


def _small_vit(dtype=torch.float32):
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5)
    return _randomise(vit).to(dtype)


def _ids(vocab=50, batch=3, length=8):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


CASES = {
    "vit": (_small_vit, lambda dtype: (torch.randn(2, 3, 32, 32, dtype=dtype),)),
    "encoder": (lambda dtype: _encoder(dtype=dtype), lambda dtype: (torch.randn(3, 5, 16, dtype=dtype),)),
    "gpt": (lambda dtype: _gpt(dtype), lambda dtype: (_ids(),)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_converted_model_computes_the_same_function_with_rmsnorms_only(case, dtype):
    build, inputs = CASES[case]
    model, example = build(dtype), inputs(dtype)
    converted, report = convert_exact(model, example)
    assert not any(isinstance(m, nn.LayerNorm) for m in converted.modules())
    assert [type(converted.get_submodule(c.path)) for c in report.converted] == [RMSNorm] * len(report.converted)
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.tolerance
    fresh = inputs(dtype) if case == "gpt" else tuple(torch.randn_like(x) for x in example)
    close, diff = _close(_outputs(model, fresh), _outputs(converted, fresh), dtype)
    assert close, diff
    assert not report.function_changing and "the same function" in str(report)


def test_torchvisions_vit_b_16_converts_exactly():
    model = _randomise(vit_b_16(weights=None))
    image = torch.randn(1, 3, 224, 224)
    want = _outputs(model, (image,))
    converted, report = convert_exact(model, (image,), inplace=True)
    assert converted is model and len(report.converted) == 25
    assert report.max_abs_diff <= report.tolerance
    close, diff = _close(want, _outputs(converted, (image,)), torch.float32)
    assert close, diff
    folded = {c.path: c.folded_into for c in report.converted}
    first = "encoder.layers.encoder_layer_0"
    assert folded[f"{first}.ln_1"] == [f"{first}.self_attention.in_proj_weight"]
    assert folded["encoder.ln"] == ["heads.head.weight"]  # through the class token's select
    centred = {c.what for c in report.centred}
    assert {"conv_proj", "class_token", "encoder.pos_embedding"} <= centred


def test_a_tied_head_stays_tied_the_embedding_centres_as_it_reads_and_the_final_norm_keeps_its_affine():
    model = _gpt()
    converted, report = convert_exact(model, (_ids(),))
    assert converted.head.weight is converted.tok.weight  # still one parameter
    assert isinstance(converted.tok, CentredEmbedding) and type(converted.pos) is nn.Embedding
    assert torch.equal(converted.tok.weight, model.tok.weight)  # the table itself unchanged
    assert converted.pos.weight.double().mean(-1).abs().max() < 1e-6  # a table read nowhere else: centred in place
    final = next(c for c in report.converted if c.path == "ln_f")
    assert final.kept == ["weight", "bias"] and "tied" in final.why_kept and final.folded_into == []
    assert torch.equal(converted.ln_f.weight, model.ln_f.weight) and torch.equal(converted.ln_f.bias, model.ln_f.bias)
    # the MLP's first linear had no bias: it gets one, to take ln2's bias, and the report names the key
    assert report.added_keys == ["blocks.0.fc.bias", "blocks.1.fc.bias"]
    assert "CentredEmbedding" in str(report)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_state_dict_keys_change_by_exactly_what_the_report_lists(case):
    build, inputs = CASES[case]
    model = build(torch.float32)
    converted, report = convert_exact(model, inputs(torch.float32))
    before, after = set(model.state_dict()), set(converted.state_dict())
    assert before - after == set(report.dropped_keys)
    assert after - before == set(report.added_keys)
    assert report.dropped_keys  # every case drops some norm's gain and bias
    for key in before & after:  # and the shapes of the kept keys are the same
        assert model.state_dict()[key].shape == converted.state_dict()[key].shape


def test_the_suites_nn_transformer_encoder_gives_the_same_output_in_every_mode():
    model = _encoder()
    converted, report = convert_exact(model, (torch.randn(3, 5, 16),))
    assert report.fast_paths_off == ["layers.0", "layers.1"]
    assert any(c.what == "input src" and "on entry" in c.how for c in report.centred)
    x = torch.randn(3, 5, 16)
    model.eval()
    converted.eval()
    with torch.no_grad():
        want = model(x)  # torch's fast path, for the original
        no_grad = converted(x)
    with torch.inference_mode():
        inference = converted(x)
    grad = converted(x)
    for out in (no_grad, inference, grad.detach()):
        assert _close(want, out, torch.float32)[0]


def test_the_converted_model_trains():
    model = _gpt()
    converted, _ = convert_exact(model, (_ids(),))
    converted.train()
    ids = _ids()
    optimiser = torch.optim.SGD(converted.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(converted(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_inplace_converts_the_model_itself_and_still_checks_it():
    model = _encoder()
    converted, report = convert_exact(model, (torch.randn(2, 4, 16),), inplace=True)
    assert converted is model and isinstance(model.layers[0].norm1, RMSNorm)
    assert report.max_abs_diff <= report.tolerance


def test_a_stream_with_a_large_mean_the_original_rounds_worse_and_the_check_says_so():
    """LayerNorm on a stream of large mean cancels digits; the centred stream does not: the check then measures
    both against the original in float64 rather than refuse a conversion that is the more exact of the two."""
    model = _encoder()
    with torch.no_grad():
        for layer in model.layers:
            layer.linear2.bias += 3e3  # each block adds a large constant to every feature
    _, report = convert_exact(model, (torch.randn(2, 4, 16),))
    assert report.max_abs_diff > report.tolerance  # the original's rounding, which the float64 run shows
    assert report.converted_error < report.tolerance < report.original_error
    assert "float64" in str(report)


def test_post_ln_is_refused_naming_the_norm():
    post_ln = r"^layers\.\d\.norm\d: its output is the residual stream itself.*post-LN"
    with pytest.raises(NotConvertible, match=post_ln) as info:
        convert_exact(_encoder(norm_first=False), (torch.randn(2, 4, 16),))
    assert "\n" not in str(info.value)


def test_prmsnorm_is_refused():
    with pytest.raises(NotConvertible, match=r"^layers\.0\.norm1: to='prmsnorm': pRMSNorm's statistic"):
        convert_exact(_encoder(), (torch.randn(2, 4, 16),), to="prmsnorm")


def test_a_nonlinearity_after_the_branchs_output_linear_is_refused_naming_it():
    model = _gpt(tail=nn.GELU())
    with pytest.raises(NotConvertible, match=r"^blocks\.\d\.tail: writes into the residual stream \(gelu\)") as info:
        convert_exact(model, (_ids(),))
    assert "\n" not in str(info.value)


class Unnormalised(nn.Module):
    """A stream that reaches the output without a norm, and one read by a linear directly."""

    def __init__(self, d=8, read_directly=False):
        super().__init__()
        self.emb, self.ln, self.fc, self.read_directly = nn.Embedding(10, d), nn.LayerNorm(d), nn.Linear(d, d), \
            read_directly

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.fc(self.ln(x))
        return self.fc(x) if self.read_directly else x


@pytest.mark.parametrize("read_directly", [False, True])
def test_a_stream_read_by_anything_but_a_layernorm_is_refused(read_directly):
    match = r"^fc: reads the residual stream \(linear\)" if read_directly else "leaves the model without a LayerNorm"
    with pytest.raises(NotConvertible, match=match):
        convert_exact(_randomise(Unnormalised(read_directly=read_directly)), (_ids(10),))


def test_torchs_encoder_decoder_folds_each_norm_into_its_rows_of_the_packed_cross_attention():
    model = _randomise(nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True, norm_first=True))
    converted, report = convert_exact(model, (torch.randn(2, 5, 16), torch.randn(2, 4, 16)))
    folded = {c.path: c.folded_into for c in report.converted}
    cross = "decoder.layers.0.multihead_attn.in_proj_weight"
    assert folded["encoder.norm"] == [f"{cross}[16:48]"] and folded["decoder.layers.0.norm2"] == [f"{cross}[0:16]"]
    assert {c.what for c in report.centred} >= {"input src", "input tgt"}
    src, tgt = torch.randn(3, 6, 16), torch.randn(3, 2, 16)
    assert _close(_outputs(model, (src, tgt)), _outputs(converted, (src, tgt)), torch.float32)[0]


class MatmulReader(nn.Module):
    """A stream scaled per token by a mask, a norm read by a bare matmul with a parameter (no bias to take the
    norm's bias), which is also the branch's write into the stream."""

    def __init__(self, d=8):
        super().__init__()
        self.emb, self.ln, self.w = nn.Embedding(10, d), nn.LayerNorm(d), nn.Parameter(torch.randn(d, d))
        self.final, self.out = nn.LayerNorm(d), nn.Linear(d, 3)

    def forward(self, ids, keep):
        x = self.emb(ids) * keep[..., None]
        x = x + self.ln(x) @ self.w
        return self.out(self.final(x))


def test_a_norm_whose_reader_cannot_take_its_bias_keeps_gain_and_bias_and_stays_exact():
    model = _randomise(MatmulReader())
    inputs = (_ids(10), torch.rand(3, 8))
    converted, report = convert_exact(model, inputs)
    ln = report.converted[0]
    assert ln.kept == ["weight", "bias"] and ln.why_kept == "w is read with no bias to take the norm's bias"
    assert report.converted[1].folded_into == ["out.weight"] and report.dropped_keys == ["final.weight", "final.bias"]
    assert _close(_outputs(model, inputs), _outputs(converted, inputs), torch.float32)[0]
