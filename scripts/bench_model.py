"""What swapping the norms buys in a model of your own: python scripts/bench_model.py MODEL [options]

MODEL is `torchvision:<name>` (any of torchvision.models, random weights), `vit-tiny` (torchvision's
VisionTransformer at 6 layers, width 192, 64x64 images: a step well under a second on 2 CPU cores), or
`module:callable` for a builder of yours that returns the model (its module importable from here). Each norm
of the model is swapped for each of --norms x --impls (`rmsnorm.swap.swap_norms`) and whole training steps are
timed round-robin (`rmsnorm.measure.measure_swap`), and the model's exact conversion to RMSNorm
(`rmsnorm.convert.convert_exact`) is reported beside it, with the difference it measured. Writes
results/bench-model/<model>-<device>.md and .json, stamped with the commit, versions and machine.
`make bench-model MODEL=... BATCH=... DEVICE=... ROUNDS=...` runs it (`ARGS=--no-convert-exact` skips the conversion).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from experiments.core.atomic import save_json, save_text  # noqa: E402
from experiments.core.machine import machine_name  # noqa: E402
from experiments.core.provenance import describe as describe_stamp  # noqa: E402
from experiments.core.provenance import stamp  # noqa: E402
from rmsnorm.convert import NotConvertible, convert_exact  # noqa: E402
from rmsnorm.measure import measure_swap  # noqa: E402
from rmsnorm.swap import swap_norms  # noqa: E402


def vit_tiny():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=64, patch_size=8, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768)


def builder(spec: str):
    """(build, input shape of one example or None) for a MODEL string."""
    if spec == "vit-tiny":
        return vit_tiny, (3, 64, 64)
    kind, _, name = spec.partition(":")
    if kind == "torchvision" and name:
        import torchvision

        def build():
            return torchvision.models.get_model(name, weights=None)

        size = getattr(build(), "image_size", 224)
        return build, (3, size, size)
    if name:
        try:
            return getattr(importlib.import_module(kind), name), None
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"MODEL={spec}: cannot import {name} from {kind} ({exc})") from None
    raise SystemExit(f"MODEL={spec}: use torchvision:<name>, vit-tiny or module:callable")


def exact_conversion(build, example: torch.Tensor) -> tuple[str, dict]:
    """`convert_exact` on a freshly built model, one example as the traced input: (the report's text, its record
    for the .json); a model it refuses gives the refusal's line instead. Every parameter and buffer of floating
    type is first moved off its initial value (a N(0, 0.02) draw added, seeded): a fresh model's unit gains, zero
    biases and zero-initialised head (torchvision's ViTs: its outputs are exactly 0) would pass the check without
    testing the folding."""
    model = build()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
    try:
        _, report = convert_exact(model, (example,))
    except NotConvertible as exc:
        return f"Exact conversion (`rmsnorm.convert.convert_exact`): refused: {exc}", {"refused": str(exc)}
    record = {"converted": [vars(c) for c in report.converted], "centred": [vars(c) for c in report.centred],
              "dropped_keys": report.dropped_keys, "added_keys": report.added_keys,
              "fast_paths_off": report.fast_paths_off, "max_abs_diff": report.max_abs_diff,
              "tolerance": report.tolerance, "original_error": report.original_error,
              "converted_error": report.converted_error}
    return ("Exact conversion (`rmsnorm.convert.convert_exact`; the same function with RMSNorms), checked on the "
            "model with every parameter moved off its initial value:\n\n" + str(report)), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-shape", help="one example's shape, e.g. 3,224,224 (default: from the model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--norms", default="layernorm,rmsnorm")
    parser.add_argument("--impls", default="fused,composite")
    parser.add_argument("--self-check", action="store_true",
                        help="also time a second copy of the LayerNorm model (its interval should contain 0)")
    parser.add_argument("--convert-exact", action=argparse.BooleanOptionalAction, default=True,
                        help="also convert the model exactly to RMSNorm (rmsnorm.convert.convert_exact) and report "
                             "it (default; --no-convert-exact skips it)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench-model")
    args = parser.parse_args(argv)
    build, shape = builder(args.model)
    if args.input_shape:
        shape = tuple(int(x) for x in args.input_shape.split(","))
    if shape is None:
        raise SystemExit(f"MODEL={args.model}: give --input-shape (one example's shape, e.g. 3,224,224)")
    torch.manual_seed(0)
    batch = torch.randn(args.batch, *shape)
    _, report = swap_norms(build(), "rmsnorm")
    if args.convert_exact:
        exact_text, exact_record = exact_conversion(build, batch[:1])
    else:
        exact_text, exact_record = ("Exact conversion (LayerNorm -> RMSNorm with no change of output): "
                                    "not run (--no-convert-exact)."), None
    result = measure_swap(build, lambda: (batch,), norms=args.norms.split(","), impls=args.impls.split(","),
                          rounds=args.rounds, device=args.device, self_check=args.self_check)
    made = stamp()
    device = torch.device(args.device)
    machine = machine_name(device)
    command = "python scripts/bench_model.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    name = f"{args.model}-{device.type}" + ("-self-check" if args.self_check else "")
    stem = re.sub(r"[^\w.-]+", "-", name).strip("-")
    text = "\n".join([
        f"# {args.model}: what swapping its norms buys", "",
        f"Produced by `{command}` ({describe_stamp(made)}) on {machine}; batch {args.batch} x {shape}.", "",
        str(result), "",
        "What the swap to RMSNorm does to the model (`rmsnorm.swap.swap_norms`; it changes the function):", "",
        str(report), "",
        exact_text, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    save_text(text, args.out / f"{stem}.md")
    save_json({"command": command, "produced_by": made, "machine": machine, "model": args.model,
               "batch": args.batch, "input_shape": list(shape), "rounds": result.rounds,
               "share": result.share, "share_interval": result.share_interval, "bound": result.bound,
               "variants": [vars(v) for v in result.variants], "swaps": result.swaps,
               "swap_report": [vars(s) for s in report.swapped], "convert_exact": exact_record},
              args.out / f"{stem}.json")
    print(text)
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
