"""Does `make bench`'s recurrent table hold in a user's own process? python scripts/bench_rnn_plain.py

One setting of the recurrent bench (the reading task's LSTM: 240 wide, batch 64, 50 steps, forward+backward),
our NormLSTM with norm=none (and LayerNorm, RMSNorm) against torch.nn.LSTM, timed interleaved in three fresh
processes run back to back, alternating, `--repeats` times:

- `bench`: the bench's own code (`scripts/bench.py`'s `run_rnn` layers and timer), with the malloc settings the
  suite's scripts re-execute themselves with (experiments/core/training/malloc.py);
- `plain`: a script as a user writes it (`import torch, rmsnorm`, `rmsnorm.interleaved` for the clock), in an
  environment without those settings;
- `plain, reference path`: the same with `RMSNORM_KERNELS=reference`, what a process gets where the fused CPU
  kernel could not be built (no compiler or ninja: the library warns once) and the layers fall back to their
  Python loop over time steps.

Each row: our layer's time over torch's, the geometric mean of the rounds' paired ratios with a 95% t interval.
Writes results/bench/rnn-plain-<machine>.json and .md (stamped); docs/speed.md shows the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.core.machine import machine_name  # noqa: E402
from experiments.core.provenance import describe as describe_stamp  # noqa: E402
from experiments.core.provenance import stamp  # noqa: E402
from experiments.core.training import malloc  # noqa: E402

SETTING = {"hidden": 240, "batch": 64, "steps": 50}
LAYERS = ["torch", "none", "layernorm", "rmsnorm"]

# what a user's script does: nothing of the suite but the library, the timer from the library
PLAIN = textwrap.dedent("""
    import json, sys, torch, rmsnorm
    from rmsnorm.interleaved import time_interleaved
    h, b, t, rounds, names = json.loads(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]))
    x = torch.randn(t, b, h, requires_grad=True)
    layers = {}
    for name in names:
        torch.manual_seed(0)
        layers[name] = BUILD
    calls = {n: (lambda m=m: m(x)[0].sum().backward()) for n, m in layers.items()}
    times = time_interleaved(calls, torch.device("cpu"), rounds=rounds, steps_per_round=1, warmup_steps=2)
    native = {n: getattr(m, "uses_native", lambda x: None)(x) for n, m in layers.items()}
    print(json.dumps({"per_round": times.per_round, "native": native}))
""")
USER_BUILD = 'torch.nn.LSTM(h, h) if name == "torch" else rmsnorm.NormLSTM(h, h, rmsnorm.NormSpec(name))'
# the bench's own code path: its layer builder (scripts/bench.py), in a process with the suite's malloc settings
BENCH = PLAIN.replace("import json, sys, torch, rmsnorm\n",
                      'import json, sys, torch\nsys.path[:0] = [sys.argv[3], sys.argv[3] + "/scripts"]\nimport bench\n'
                      ).replace("BUILD", 'bench._layer("LSTM", h, name)')
PLAIN = PLAIN.replace("BUILD", USER_BUILD)


def _env(kind: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in malloc.MALLOC_ENV and k != "RMSNORM_KERNELS"}
    if kind == "bench":
        env.update(malloc.MALLOC_ENV)
    if kind == "plain, reference path":
        env["RMSNORM_KERNELS"] = "reference"
    return env


def run_one(kind: str, rounds: int, threads: int) -> dict:
    program = BENCH if kind == "bench" else PLAIN
    spec = json.dumps([SETTING["hidden"], SETTING["batch"], SETTING["steps"], rounds, LAYERS])
    args = [sys.executable, "-c", program, spec, str(threads), str(REPO)]
    done = subprocess.run(args, env=_env(kind), cwd="/" if kind != "bench" else REPO, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(per_round: dict) -> dict:
    """Each of our layers over torch's: 1 - speed-up, from the rounds' paired ratios, with its interval."""
    from rmsnorm.interleaved import speedup, speedup_interval

    ref = per_round["torch"]
    out = {}
    for name, times in per_round.items():
        if name == "torch":
            continue
        lo, hi = speedup_interval(ref, times)
        out[name] = [1 - speedup(ref, times), 1 - hi, 1 - lo]
    return out


def render(data: dict) -> str:
    lines = [f"# Our LSTM against torch.nn.LSTM: the bench's process, a plain one, the reference path: "
             f"{data['machine']}", "",
             f"Command: `{data['command']}`  ", f"Produced by: {describe_stamp(data['produced_by'])}  ",
             f"Setting: LSTM {SETTING['hidden']} wide, batch {SETTING['batch']}, {SETTING['steps']} steps, "
             f"forward+backward, {data['threads']} thread(s), {data['rounds']} interleaved rounds a run; the three "
             "kinds of process run back to back, alternating, each run its own row.", "",
             "| run | process | ours, norm=none / torch [95%] | ours, layernorm / torch [95%] | "
             "ours, rmsnorm / torch [95%] | our layers on |", "|---|---|---|---|---|---|"]
    for i, run in enumerate(data["runs"]):
        if "error" in run:
            lines.append(f"| {i + 1} | {run['kind']} | failed: {run['error']} | | | |")
            continue
        cells = [f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for v in (run["ratios"][n] for n in LAYERS[1:])]
        native = "native op" if all(run["native"].get(n) for n in LAYERS[1:]) else "Python loop over steps"
        lines.append(f"| {i + 1} | {run['kind']} | {' | '.join(cells)} | {native} |")
    lines += ["", data["verdict"], ""]
    return "\n".join(lines)


def verdict(runs: list[dict]) -> str:
    """Whether every bench run's interval for norm=none overlaps every plain run's."""
    def intervals(kind):
        return [r["ratios"]["none"] for r in runs if r["kind"] == kind and "ratios" in r]

    bench, plain, ref = intervals("bench"), intervals("plain"), intervals("plain, reference path")
    if not bench or not plain:
        return "Not every kind of process ran: no verdict."
    agree = all(b[1] <= p[2] and p[1] <= b[2] for b in bench for p in plain)
    text = ("The bench's process and a plain one agree: every bench run's interval for norm=none overlaps every "
            "plain run's." if agree else
            "The bench's process and a plain one disagree: some bench run's interval for norm=none does not overlap "
            "a plain run's.")
    if ref:
        text += (" On the reference path (no fused kernel) our layer is a Python loop over time steps, "
                 "norm=none / torch " + ", ".join(f"{r[0]:.2f}" for r in ref) + ": the setting where a user sees "
                 "our layer far behind torch's.")
    return text


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind of process, alternating")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    kinds = ["bench", "plain", "plain, reference path"]
    runs = []
    for rep in range(args.repeats):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            print(f"{kind}, run {rep + 1}/{args.repeats}", flush=True)
            run = {"kind": kind, **run_one(kind, args.rounds, args.threads)}
            if "per_round" in run:
                run["ratios"] = ratios(run["per_round"])
            runs.append(run)
    machine = machine_name(torch.device("cpu"))
    given = argv if argv is not None else sys.argv[1:]
    data = {"machine": machine, "command": " ".join(["python scripts/bench_rnn_plain.py", *given]),
            "produced_by": stamp(machine), "date": str(datetime.date.today()), "threads": args.threads,
            "rounds": args.rounds, "setting": SETTING, "runs": runs, "verdict": verdict(runs)}
    stem = "rnn-plain-" + "".join(c if c.isalnum() else "-" for c in machine.lower()).strip("-")
    while "--" in stem:
        stem = stem.replace("--", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
