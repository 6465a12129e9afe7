"""Translation data preparation before and after a change, back to back on one machine:
python scripts/bench_prepare.py --before <rev> [--pairs 200000] [--rounds 3]

1. Generates a WMT-shaped corpus of --pairs training pairs (Zipfian pseudo-words, sentence lengths about
   WMT14's) as the hub's parquet files: wmt/wmt14 de-en train shards, validation, test, and wmt/wmt17 test,
   in the hub's schema (one struct column `translation` of {de, en}).
2. Runs `scripts/prepare.py task=translation preset=paper` with the code of --before (a `git worktree` of that
   commit) and with this working tree, each in its own subprocess from an empty data_dir, alternating which goes
   first over --rounds rounds; both read the corpus through a stand-in for the hub (no network: the files are
   copied as a download would leave them). Records the wall time, the peak RSS of the largest process (wait4)
   and the sampled peak RSS of the whole process tree (`Dataset.map` workers included), and the time of a second
   prepare of the same folder.
3. For each code, builds the task from the prepared folder and times its data loader (batches per second of the
   first epoch) against training steps of the model on those batches (steps per second).

Writes results/prepare/bench.json (stamped with commit, versions, machine, date); `python scripts/readme.py`
renders it into docs/running.md. A run below 200,000 pairs is marked a dry run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_PAIRS = 200_000  # below this a result is a dry run
EVAL_PAIRS = {"validation": 3000, "test": 3003, "test17": 3004}  # newstest2013, newstest2014, newstest2017
SYLLABLES = ["ba", "de", "ki", "lo", "mu", "ne", "po", "ra", "si", "tu", "va", "ze", "gor", "lin", "tam", "wer",
             "ach", "bel", "dor", "ein", "fes", "gun", "hal", "ist", "kor", "lau", "mer", "nis", "ob", "sch"]


# ---- the corpus --------------------------------------------------------------------------------------------


def _vocabulary(rng: random.Random, n: int, longest: int) -> list[str]:
    """n distinct pseudo-words of 2 to `longest` syllables (30^2 + 30^3 + ... of them: more than n)."""
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, longest)))] = None
    return list(words)


def wmt_shaped(pairs: int, seed: int) -> list[dict]:
    """Pairs shaped like WMT14 En-De: 40k Zipfian pseudo-words a language, about 23 words a sentence (lognormal),
    the German side 80-110% of the English one's length, capitalised, full stop."""
    rng = random.Random(seed)
    vocab = {"en": _vocabulary(rng, 40_000, 4), "de": _vocabulary(rng, 40_000, 5)}
    cumulative, total = [], 0.0
    for rank in range(40_000):
        total += (rank + 1) ** -1.0
        cumulative.append(total)
    records = []
    for _ in range(pairs):
        n_en = min(100, max(1, int(rng.lognormvariate(3.0, 0.5))))
        n_de = max(1, round(n_en * rng.uniform(0.8, 1.1)))
        pair = {lang: " ".join(rng.choices(vocab[lang], cum_weights=cumulative, k=n)).capitalize() + "."
                for lang, n in (("de", n_de), ("en", n_en))}
        records.append({"translation": pair})
    return records


def write_corpus(hub: Path, pairs: int, shards: int, seed: int = 0) -> dict:
    """The hub's layout under hub/<repo>/...: {repo: {path in repo: sha256}}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("translation", pa.struct([("de", pa.string()), ("en", pa.string())]))])
    scale = 1.0 if pairs >= 30_000 else pairs / 30_000  # a dry run's evaluation sets shrink with it
    sizes = {name: max(10, int(n * scale)) for name, n in EVAL_PAIRS.items()}
    records = wmt_shaped(pairs + sum(sizes.values()), seed)
    train, rest = records[:pairs], records[pairs:]
    files = {("wmt/wmt14", f"de-en/train-{i:05d}-of-{shards:05d}.parquet"): train[i * pairs // shards:
                                                                               (i + 1) * pairs // shards]
             for i in range(shards)}
    start = 0
    for (repo, path), name in ((("wmt/wmt14", "de-en/validation-00000-of-00001.parquet"), "validation"),
                               (("wmt/wmt14", "de-en/test-00000-of-00001.parquet"), "test"),
                               (("wmt/wmt17", "de-en/test-00000-of-00001.parquet"), "test17")):
        files[repo, path] = rest[start : start + sizes[name]]
        start += sizes[name]
    listing: dict[str, dict[str, str]] = {}
    for (repo, path), rows in files.items():
        out = hub / repo / path
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)
        listing.setdefault(repo, {})[path] = hashlib.sha256(out.read_bytes()).hexdigest()
    (hub / "listing.json").write_text(json.dumps(listing, indent=1))
    return listing


# ---- the children: one prepare, or the loader against the steps, with one tree's code --------------------------


def _stand_in_hub(hub: Path, cache: Path) -> None:
    """HfApi.list_repo_tree and hf_hub_download served from `hub` (a copy each, as a download leaves it: into
    local_dir where the caller names one, else into a hub-cache-like folder)."""
    from types import SimpleNamespace

    import huggingface_hub

    listing = json.loads((hub / "listing.json").read_text())

    def list_repo_tree(self, repo, folder, repo_type=None, **kwargs):
        return [SimpleNamespace(path=p, lfs=SimpleNamespace(sha256=sha)) for p, sha in listing[repo].items()
                if p.startswith(folder + "/")]

    def hf_hub_download(repo, path, repo_type=None, local_dir=None, **kwargs):
        dest = Path(local_dir) / path if local_dir is not None else cache / repo / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hub / repo / path, dest)
        return str(dest)

    huggingface_hub.HfApi.list_repo_tree = list_repo_tree
    huggingface_hub.hf_hub_download = hf_hub_download


def _check_code(tree: Path) -> None:
    import experiments

    if not Path(experiments.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the child imported {experiments.__file__}, not the code of {tree}")


def child_prepare(args) -> int:
    import importlib.util

    tree = Path(args.tree)
    _check_code(tree)
    _stand_in_hub(Path(args.hub), Path(args.data_dir) / ".hub-cache")
    spec = importlib.util.spec_from_file_location("tree_prepare", tree / "scripts" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["task=translation", "preset=paper", f"data_dir={args.data_dir}",
                        f"task.bpe_vocab_size={args.bpe_vocab}"])


def child_loader(args) -> int:
    import itertools

    import torch

    _check_code(Path(args.tree))
    from experiments.core.training.config import compose_config
    from experiments.core.training.run import build_task

    cfg = compose_config(["task=translation", "preset=paper", f"data_dir={args.data_dir}", "norm=rmsnorm",
                          "logger=none", f"task.bpe_vocab_size={args.bpe_vocab}", *args.override])
    start = time.perf_counter()
    task = build_task(cfg, torch.device("cpu"))
    load_s = time.perf_counter() - start
    start, n = time.perf_counter(), 0
    for _ in itertools.islice(task.batches(0, 0), args.batches):
        n += 1
    loader_s = time.perf_counter() - start
    batches = list(itertools.islice(task.batches(0, 0), args.steps + 1))
    model, optimizer = task.model, task.optimizer
    model.train()

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        optimizer.step()

    step(batches[0])  # warm-up: first-call allocations
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    steps_s = time.perf_counter() - start
    print(json.dumps({"load_s": load_s, "batches": n, "batches_per_s": n / loader_s,
                      "steps": len(batches) - 1, "steps_per_s": (len(batches) - 1) / steps_s,
                      "train_pairs": len(task.train), "batch_size": task.batch_size,
                      "torch_threads": torch.get_num_threads()}))
    return 0


# ---- the parent ------------------------------------------------------------------------------------------------


def _descendants_rss(root_pid: int) -> int:
    """The summed resident set of root_pid and every process below it, in bytes (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    total, todo, page = 0, [root_pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended meanwhile
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total


def run_child(argv: list[str], tree: Path, log: Path) -> dict:
    """One child with `tree`'s code: its wall time, its own peak RSS (wait4: the largest of it and the children
    it waited for) and the sampled peak of its process tree's summed RSS; a failure is fatal."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as out:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], cwd=tree, env=env,
                                 stdout=subprocess.PIPE, stderr=out, text=True)
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _descendants_rss(child.pid))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} with {tree} failed ({child.returncode}); see {log}")
    return {"wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024, "tree_peak_rss_mb": peak[0] / 2**20,
            "stdout": stdout}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("datasets", "pyarrow", "sentencepiece", "huggingface_hub"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the commit (or any git revision) of the code to compare with")
    parser.add_argument("--pairs", type=int, default=FULL_PAIRS, help="training pairs of the corpus")
    parser.add_argument("--shards", type=int, default=2, help="parquet files the training split comes in")
    parser.add_argument("--rounds", type=int, default=3, help="prepares of each code, alternating which goes first")
    parser.add_argument("--bpe-vocab", type=int, default=32000, help="task.bpe_vocab_size (the paper's: 32000)")
    parser.add_argument("--batches", type=int, default=200, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (after one warm-up step)")
    parser.add_argument("--override", action="append", default=[],
                        help="a Hydra override for the loader and step timing (e.g. task.model.hidden=256)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "prepare" / "bench.json")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--child", choices=["prepare", "loader"], help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "prepare":
        return child_prepare(args)
    if args.child == "loader":
        return child_loader(args)
    if not args.before:
        parser.error("--before <rev> is required: the code to compare this working tree with")

    sys.path.insert(0, str(REPO))
    import torch

    from experiments.core.machine import machine_name
    from experiments.core.provenance import stamp

    before = subprocess.run(["git", "rev-parse", "--verify", f"{args.before}^{{commit}}"], cwd=REPO,
                            capture_output=True, text=True)
    if before.returncode != 0:
        raise SystemExit(f"--before {args.before}: not a commit of this repository")
    before_commit = before.stdout.strip()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "children.log"
    tree_before = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree_before), before_commit], cwd=REPO,
                   check=True, capture_output=True)
    trees = {"before": tree_before, "after": REPO}
    try:
        print(f"generating {args.pairs} WMT-shaped pairs in {work / 'hub'}", flush=True)
        write_corpus(work / "hub", args.pairs, args.shards)
        runs = []
        for round_ in range(args.rounds):
            for code in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
                data_dir = work / f"data-{code}"
                shutil.rmtree(data_dir, ignore_errors=True)
                child = ["--child", "prepare", "--tree", str(trees[code]), "--hub", str(work / "hub"),
                         "--data-dir", str(data_dir), "--bpe-vocab", str(args.bpe_vocab)]
                first = run_child(child, trees[code], log)
                again = run_child(child, trees[code], log)
                runs.append({"code": code, "round": round_, "prepare_s": first["wall_s"],
                             "max_rss_mb": first["max_rss_mb"], "tree_peak_rss_mb": first["tree_peak_rss_mb"],
                             "again_s": again["wall_s"]})
                print(f"round {round_} {code}: prepare {first['wall_s']:.1f} s, again {again['wall_s']:.1f} s, "
                      f"peak RSS {first['max_rss_mb']:.0f} MB (all processes {first['tree_peak_rss_mb']:.0f} MB)",
                      flush=True)
        loader = {}
        for code in ("before", "after"):
            child = ["--child", "loader", "--tree", str(trees[code]), "--data-dir", str(work / f"data-{code}"),
                     "--bpe-vocab", str(args.bpe_vocab), "--batches", str(args.batches), "--steps", str(args.steps),
                     *(f"--override={o}" for o in args.override)]
            result = run_child(child, trees[code], log)
            loader[code] = {**json.loads(result["stdout"].strip().splitlines()[-1]),
                            "max_rss_mb": result["max_rss_mb"]}
            print(f"{code}: loader {loader[code]['batches_per_s']:.1f} batches/s, "
                  f"steps {loader[code]['steps_per_s']:.3f}/s", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree_before)], cwd=REPO, capture_output=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    summary = {code: {key: statistics.median(r[key] for r in runs if r["code"] == code)
                      for key in ("prepare_s", "again_s", "max_rss_mb", "tree_peak_rss_mb")}
               for code in ("before", "after")}
    machine = machine_name(torch.device("cpu"))
    command = "python scripts/bench_prepare.py " + " ".join(argv)
    data = {"command": command, "produced_by": stamp(machine), "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": args.pairs < FULL_PAIRS, "pairs": args.pairs, "shards": args.shards,
            "bpe_vocab": args.bpe_vocab, "rounds": args.rounds, "cores": len(os.sched_getaffinity(0)),
            "before": before_commit, "after": "this working tree (produced_by.commit)", "versions": versions(),
            "summary": summary, "runs": runs, "loader": loader}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
