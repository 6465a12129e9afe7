"""Norm-layer benchmark: python scripts/bench.py [--device cpu|cuda] [--dtype float32] [--quick]

Forward, backward and forward+backward of every norm at the shapes the paper's tasks use, medians over
repeated runs after warm-up (torch.utils.benchmark, CUDA synchronised), ratios to torch's fused LayerNorm
measured in the same run, achieved GB/s and, on CUDA, the share of the card's peak memory bandwidth.
Writes results/bench/<device>.md and a plot, with the command and the machine above the table.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import rmsnorm
from experiments.core import malloc
from experiments.core.machine import machine_name
from rmsnorm.kernels import dispatch

EPS = 1e-8
P = 0.0625

# (task, what the shape is, rows, features)
CASES = [
    ("translation", "tokens x hidden 1024 (batch 80 x 50 tokens)", 4000, 1024),
    ("translation", "tokens x 2*hidden (GRU gates [r;u])", 4000, 2048),
    ("retrieval", "batch x GRU hidden", 128, 1024),
    ("reading", "batch x LSTM hidden, one step", 64, 240),
    ("reading", "batch x 4 LSTM gates, one step", 64, 960),
    ("cifar10", "(100 x 96 channels) x 32x32 map", 9600, 1024),
    ("cifar10", "(100 x 192 channels) x 16x16 map", 19200, 256),
    ("cifar10", "(100 x 192 channels) x 8x8 map", 19200, 64),
]
QUICK_CASES = [("quick", "small", 64, 512), ("quick", "odd width", 33, 77)]

# peak memory bandwidth in GB/s by device-name fragment (vendor data sheets)
PEAK_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300,
             "RTX 4090": 1008, "RTX 3090": 936, "V100": 900, "TITAN X": 480, "2080 Ti": 616}


def implementations(d: int):
    k = max(1, int(d * P))
    return {
        "none (x*g)": lambda x, w, b: x * w,
        "layernorm (torch)": lambda x, w, b: F.layer_norm(x, (d,), w, b, EPS),
        "rms_norm (torch)": lambda x, w, b: F.rms_norm(x, (d,), w, EPS),
        "rmsnorm (ours)": lambda x, w, b: rmsnorm.rms_norm(x, w, None, EPS),
        f"prmsnorm (ours, p={P:g})": lambda x, w, b: rmsnorm.rms_norm(x, w, None, EPS, k=k),
        "l2norm (ours)": lambda x, w, b: rmsnorm.l2_norm(x, w, None, EPS),
    }


@dataclass
class Result:
    task: str
    shape: str
    rows: int
    d: int
    impl: str
    fwd: float
    bwd: float
    fwd_bwd: float


def measure(fn, x, w, b, dy, min_run_time: float) -> tuple[float, float, float]:
    def median(stmt, env):
        return Timer(stmt, globals=env).blocked_autorange(min_run_time=min_run_time).median

    with torch.no_grad():
        fwd = median("fn(x, w, b)", {"fn": fn, "x": x, "w": w, "b": b})
    y = fn(x, w, b)
    params = [x, w]
    bwd = median("torch.autograd.grad(y, params, dy, retain_graph=True)",
                 {"torch": torch, "y": y, "params": params, "dy": dy})
    both = median("torch.autograd.grad(fn(x, w, b), params, dy)",
                  {"torch": torch, "fn": fn, "x": x, "w": w, "b": b, "params": params, "dy": dy})
    return fwd, bwd, both


def run(cases, device: torch.device, dtype: torch.dtype, min_run_time: float) -> list[Result]:
    results = []
    for task, shape, rows, d in cases:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(rows, d, device=device, dtype=dtype, generator=g).requires_grad_()
        w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)
        b = torch.zeros(d, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(rows, d, device=device, dtype=dtype, generator=g)
        for name, fn in implementations(d).items():
            results.append(Result(task, shape, rows, d, name, *measure(fn, x, w, b, dy, min_run_time)))
        print(f"  {task:12s} {rows:6d} x {d:5d} done", flush=True)
    return results


# (layer kind, hidden, batch, steps, norms): the translation decoder's GRU, the retrieval task's sentence
# encoder (12-word captions) and the reading task's LSTM
RNN_SETTINGS = [
    ("GRU", 1024, 80, 50, ["torch", "none"]),
    ("GRU", 256, 80, 50, ["torch", "none", "layernorm", "rmsnorm", "prmsnorm"]),
    ("GRU", 1024, 128, 12, ["torch", "none", "layernorm", "rmsnorm", "prmsnorm"]),
    ("LSTM", 240, 64, 50, ["torch", "none", "layernorm", "rmsnorm", "prmsnorm"]),
]
QUICK_RNN = [("GRU", 32, 8, 5, ["torch", "none", "layernorm", "rmsnorm"]),
             ("LSTM", 32, 8, 5, ["torch", "none", "layernorm", "rmsnorm"])]


def _layer(kind: str, hidden: int, norm: str) -> torch.nn.Module:
    if norm == "torch":
        return (torch.nn.GRU if kind == "GRU" else torch.nn.LSTM)(hidden, hidden)
    spec = rmsnorm.NormSpec(norm, p=P)
    return rmsnorm.NormGRU(hidden, hidden, spec) if kind == "GRU" else rmsnorm.NormLSTM(hidden, hidden, spec)


def run_rnn(device: torch.device, dtype: torch.dtype, min_run_time: float, quick: bool) -> list[dict]:
    """Forward+backward of a recurrent layer over its steps."""
    rows = []
    for kind, hidden, batch, steps, norms in QUICK_RNN if quick else RNN_SETTINGS:
        x = torch.randn(steps, batch, hidden, device=device, dtype=dtype, requires_grad=True)
        for norm in norms:
            torch.manual_seed(0)
            layer = _layer(kind, hidden, norm).to(device, dtype)
            t = Timer("layer(x)[0].sum().backward()", globals={"layer": layer, "x": x}).blocked_autorange(
                min_run_time=min_run_time).median
            rows.append({"kind": kind, "hidden": hidden, "batch": batch, "steps": steps, "norm": norm, "seconds": t})
        print(f"  {kind} hidden {hidden} done", flush=True)
    return rows


def render_rnn(rows: list[dict]) -> str:
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        ref = f"torch.nn.{kind}"
        out += [f"## {kind} layer: forward+backward", "",
                f"`added` is the time over our {kind} with norm=none; `added/LN's` compares it with what LayerNorm "
                "adds.", "", f"| hidden | batch | steps | layer | ms | / {ref} | added ms | added / LN's added |",
                "|---|---|---|---|---|---|---|---|"]
        for hidden, batch, steps in dict.fromkeys((r["hidden"], r["batch"], r["steps"]) for r in rows
                                                  if r["kind"] == kind):
            group = {r["norm"]: r["seconds"] for r in rows
                     if (r["kind"], r["hidden"], r["batch"], r["steps"]) == (kind, hidden, batch, steps)}
            base, ln = group.get("none"), group.get("layernorm")
            for norm, t in group.items():
                added = t - base if base is not None and norm not in ("none", "torch") else None
                ratio = added / (ln - base) if added is not None and ln is not None and ln > base else None
                name = ref if norm == "torch" else f"ours, {norm}"
                added_ms = "" if added is None else f"{added * 1e3:.1f}"
                ratio_text = "" if ratio is None else f"{ratio:.2f}"
                out.append(f"| {hidden} | {batch} | {steps} | {name} | {t * 1e3:.1f} | {t / group['torch']:.2f} | "
                           f"{added_ms} | {ratio_text} |")
        out.append("")
    return "\n".join(out)


def peak_bandwidth(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, ""
    name = torch.cuda.get_device_name(device)
    for fragment, gbps in PEAK_GBPS.items():
        if fragment in name:
            return float(gbps), f"{gbps} GB/s (data sheet, '{fragment}')"
    return None, "unknown for this card"


def render(results: list[Result], device: torch.device, dtype: torch.dtype, command: str, machine: str) -> str:
    peak, peak_note = peak_bandwidth(device)
    size = torch.finfo(dtype).bits // 8
    lines = [
        f"# Norm benchmark: {machine}",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today()}, torch {torch.__version__}, dtype {str(dtype).replace('torch.', '')}, "
        f"eps {EPS:g}  ",
        "Times are medians in microseconds (torch.utils.benchmark, after warm-up); `/LN` is the time over torch's "
        "fused LayerNorm in the same run; GB/s counts the minimal traffic (forward reads x and writes y, backward "
        "reads x and dy and writes dx)." + (f" Peak bandwidth: {peak_note}." if peak else ""),
        f"On Linux the script runs with {malloc.describe()} so that glibc keeps freed blocks instead of "
        "page-faulting them in anew on some calls (experiments/core/malloc.py).",
        "",
    ]
    for (task, shape, rows, d) in dict.fromkeys((r.task, r.shape, r.rows, r.d) for r in results):
        group = [r for r in results if (r.task, r.shape, r.rows, r.d) == (task, shape, rows, d)]
        ln = next(r for r in group if r.impl.startswith("layernorm"))
        head = "| norm | fwd us | bwd us | fwd+bwd us | fwd /LN | fwd+bwd /LN | fwd GB/s | bwd GB/s |"
        if peak:
            head += " fwd % peak | bwd % peak |"
        lines += [f"## {task}: {rows} x {d}, {shape}", "", head, "|---" * (head.count("|") - 1) + "|"]
        for r in group:
            fwd_gbps = 2 * rows * d * size / r.fwd / 1e9
            bwd_gbps = 3 * rows * d * size / r.bwd / 1e9
            cells = [r.impl, f"{r.fwd * 1e6:.1f}", f"{r.bwd * 1e6:.1f}", f"{r.fwd_bwd * 1e6:.1f}",
                     f"{r.fwd / ln.fwd:.2f}", f"{r.fwd_bwd / ln.fwd_bwd:.2f}", f"{fwd_gbps:.1f}", f"{bwd_gbps:.1f}"]
            if peak:
                cells += [f"{100 * fwd_gbps / peak:.0f}%", f"{100 * bwd_gbps / peak:.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: list[Result], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.task, r.rows, r.d) for r in results))
    impls = [i for i in dict.fromkeys(r.impl for r in results) if not i.startswith("layernorm")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.8 / len(impls)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd"), strict=True):
        for j, impl in enumerate(impls):
            ratios = []
            for key in keys:
                group = {r.impl: r for r in results if (r.task, r.rows, r.d) == key}
                ln = next(r for name, r in group.items() if name.startswith("layernorm"))
                ratios.append(getattr(group[impl], mode) / getattr(ln, mode))
            ax.bar([i + j * width for i in range(len(keys))], ratios, width, label=impl)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        ax.set_xticklabels([f"{t}\n{r}x{d}" for t, r, d in keys], fontsize=7)
        ax.set_title({"fwd": "forward", "fwd_bwd": "forward + backward"}[mode] + ": time / LayerNorm's")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--quick", action="store_true", help="two small shapes, short timings (a smoke test)")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds of timing per measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bench")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if device.type == "cpu":
        from rmsnorm.kernels import cpu

        cpu.load()  # build outside the timings
    machine = machine_name(device)
    path = "fused kernels" if dispatch.enabled() else "reference (RMSNORM_KERNELS=reference)"
    print(f"benchmarking on {machine}, {args.dtype}, our norms via {path}")
    results = run(QUICK_CASES if args.quick else CASES, device, dtype, 0.02 if args.quick else args.min_run_time)
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in given)
    text = render(results, device, dtype, command.strip(), machine)
    text += "\n" + render_rnn(run_rnn(device, dtype, 0.2 if args.quick else 3.0, args.quick))
    stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{device.type}-{machine}-{args.dtype}").strip("-").lower()
    if args.quick:
        stem += "-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(text)
    plot(results, args.out / f"{stem}.png", f"{machine}, {args.dtype}")
    print(text)
    print(f"wrote {args.out / (stem + '.md')} and .png")
    return 0


if __name__ == "__main__":
    malloc.reexec_with_stable_malloc()
    sys.exit(main())
