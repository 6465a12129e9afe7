"""The training runs of `make demo`: python scripts/demo_runs.py OUT [--jobs 2] [--seeds 0 1 2]

Every task x every norm it declares x every seed, and the Transformer's pre-norm placement beside its post-norm
one: one Hydra sweep (over the norms) per task and seed, `scripts/train.py -m`, each logged to OUT/logs/. The
sweeps run in --jobs lanes of one thread each (on a 2-core machine two one-thread runs train about twice as many
steps a second as one two-thread run of these small models). A lane is one process that runs sweep after sweep,
so torch and the rest are imported once a lane rather than once a sweep (7-8 s a start on the 2-core AMD EPYC,
18 sweeps). A failed sweep does not stop the others, nor does a lane that dies (a new lane takes over the
queue): the exit status says that something failed, and the report marks the missing rows.
"""

from __future__ import annotations

from experiments.core.training import malloc

if __name__ == "__main__":
    # before torch and Hydra load: the lanes inherit the steady malloc settings
    malloc.reexec_with_stable_malloc()

import argparse
import importlib.util
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# longest sweeps first (their order measured on the 2-core AMD EPYC, 2026-12-01), so the lanes end together
# instead of one waiting on a long sweep started last; a task not named here runs after them
ORDER = ["cifar10", "translation", "transformer-pre", "transformer", "reading", "retrieval"]
PRE = "transformer-pre"  # the Transformer with task.model.norm_position=pre


@dataclass(frozen=True)
class Sweep:
    name: str  # the task, or transformer-pre
    seed: int
    argv: tuple[str, ...]  # scripts/train.py's arguments

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"

    @property
    def log(self) -> str:
        return f"{self.name}-s{self.seed}.log"


def plan(table: dict[str, list[str]], seeds: list[int], out: Path, preset: str, extra: list[str],
         pair_seeds: list[int] = (), pair: tuple[str, ...] = ()) -> list[Sweep]:
    """The sweeps, longest first: task -> norms as configs/ declare them (scripts/tasks.py table); with
    `pair_seeds`, those seeds again for the norms of `pair` only (the two norms the tables compare)."""
    names = list(table) + ([PRE] if "transformer" in table else [])
    names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    sweeps = []
    for name in names:
        task = "transformer" if name == PRE else name
        runs = [(seed, table[task]) for seed in seeds]
        runs += [(seed, [n for n in table[task] if n in pair]) for seed in pair_seeds if seed not in seeds]
        for seed, norms in runs:
            if not norms:
                continue
            argv = ("-m", f"task={task}", f"norm={','.join(norms)}", f"preset={preset}", f"seed={seed}",
                    *(["task.model.norm_position=pre"] if name == PRE else []), *extra, "train.progress=false",
                    f"hydra.sweep.dir={out}/{name}/s{seed}")
            sweeps.append(Sweep(name, seed, argv))
    return sweeps


def _load_script(path: Path):
    """The training script as a module (its `__main__` block, the malloc re-execution included, does not run)."""
    spec = importlib.util.spec_from_file_location("demo_lane_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Hydra finds `config_path` from the task function's file only when it belongs to __main__ (else it reads
    # the module name as a package): the function is the script's, as when the script is run
    getattr(module.main, "__wrapped__", module.main).__module__ = "__main__"
    return module


def run_sweep(script, sweep: Sweep, log_path: Path) -> bool:
    """One sweep in this process, its stdout and stderr (Python's and the libraries') into log_path."""
    from hydra.core.global_hydra import GlobalHydra

    from experiments.core.reporting import sweep as sweep_status

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            GlobalHydra.instance().clear()  # left initialised by the previous sweep
            sweep_status.failed_runs.clear()
            sys.argv = [str(script.__file__), *sweep.argv]
            try:
                script.main()
                ok = True
            except SystemExit as exc:
                ok = exc.code in (0, None)
            except BaseException:  # a sweep that raises is one failed sweep, not a failed lane
                traceback.print_exc()
                ok = False
            ok = ok and not sweep_status.failed_runs
            if sweep_status.failed_runs:
                print(f"{len(sweep_status.failed_runs)} run(s) failed:", *sweep_status.failed_runs, sep="\n  ")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return ok


def lane(script_path: str, logs: str, conn) -> None:
    """A worker: imports the training script once, then runs the sweeps the parent sends until None. Every
    message goes straight through this lane's own pipe, so a lane killed at any moment blocks no other."""
    script = _load_script(Path(script_path))
    conn.send(("ready", 0.0))
    while (sweep := conn.recv()) is not None:
        start = time.perf_counter()
        ok = run_sweep(script, sweep, Path(logs) / sweep.log)
        conn.send(("ok" if ok else "failed", time.perf_counter() - start))


@dataclass
class _Lane:
    process: mp.Process
    conn: object
    sweep: Sweep | None = None
    began: float = 0.0


def run_lanes(sweeps: list[Sweep], jobs: int, out: Path, script: Path) -> int:
    """Runs every sweep in `jobs` lanes; prints a line per sweep; the number of sweeps that failed."""
    from multiprocessing.connection import wait

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no state of this process (or of a dead lane) carried over
    pending = list(reversed(sweeps))  # popped from the end: the longest first
    jobs = max(1, min(jobs, len(sweeps)))

    def start_lane() -> _Lane:
        ours, theirs = ctx.Pipe()
        p = ctx.Process(target=lane, args=(str(script), str(logs), theirs), daemon=True)
        p.start()
        theirs.close()
        return _Lane(p, ours)

    print(f"demo: {len(sweeps)} sweeps in {jobs} lanes", flush=True)
    lanes = [start_lane() for _ in range(jobs)]
    outcome: dict[Sweep, bool] = {}
    deaths = 0
    while lanes:
        ready = wait([x.conn for x in lanes] + [x.process.sentinel for x in lanes])
        for x in list(lanes):
            if x.conn in ready or x.process.sentinel in ready:
                try:
                    kind, seconds = x.conn.recv()
                except EOFError:  # the lane is gone: in a sweep (a crash, the OOM killer), that sweep failed
                    x.process.join()
                    lanes.remove(x)
                    if x.process.exitcode == 0:
                        continue
                    deaths += 1
                    if x.sweep is not None:
                        outcome[x.sweep] = False
                        print(f"  {x.sweep.label}: FAILED, its lane died (exit code {x.process.exitcode}) after "
                              f"{time.monotonic() - x.began:.0f} s (log: {logs / x.sweep.log})", flush=True)
                    if pending and deaths <= jobs + len(sweeps):  # the queue goes on in a new lane
                        lanes.append(start_lane())
                    continue
                if x.sweep is not None:
                    outcome[x.sweep] = kind == "ok"
                    if kind == "ok":
                        print(f"  {x.sweep.label}: done in {seconds:.0f} s", flush=True)
                    else:
                        print(f"  {x.sweep.label}: FAILED after {seconds:.0f} s (log: {logs / x.sweep.log})",
                              flush=True)
                x.sweep = pending.pop() if pending else None
                x.began = time.monotonic()
                x.conn.send(x.sweep)
    for sweep in sweeps:
        if sweep not in outcome:  # lanes kept dying before they could take it
            outcome[sweep] = False
            print(f"  {sweep.label}: FAILED, never run (lanes died {deaths} times)", flush=True)
    return sum(not ok for ok in outcome.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the sweeps' folder (multirun/demo)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel lanes, one thread each")
    parser.add_argument("--seeds", default="0 1 2", help='the seeds, "0 1 2" or 0,1,2')
    parser.add_argument("--pair-seeds", default="",
                        help='more seeds for the compared pair only (--pair), "3 4": their intervals narrow where '
                             "the other rows keep three seeds")
    parser.add_argument("--pair", default="layernorm,rmsnorm", help="the norms --pair-seeds runs (comma list)")
    parser.add_argument("--tasks", help="comma list (default: every task configs/ declares)")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--script", type=Path, default=REPO / "scripts" / "train.py", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. logger=none")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the options
    # after argparse: --help answers at once
    from experiments.core.training.config import CONFIG_DIR, compose_config

    names = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
    if args.tasks:
        unknown = sorted(set(args.tasks.split(",")) - set(names))
        if unknown:
            raise SystemExit(f"demo: no task {', '.join(unknown)} in configs/task/ (there: {', '.join(names)})")
        names = args.tasks.split(",")
    table = {t: list(compose_config([f"task={t}"]).task.norms) for t in names}
    os.environ["OMP_NUM_THREADS"] = "1"  # the lanes' torch reads it when it loads: one thread each
    try:
        seeds = [int(s) for s in args.seeds.replace(",", " ").split()]
        pair_seeds = [int(s) for s in args.pair_seeds.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"demo: --seeds and --pair-seeds take whole numbers (\"0 1 2\" or 0,1,2), not "
                         f"{args.seeds!r} / {args.pair_seeds!r}") from None
    pair = tuple(n for n in args.pair.split(",") if n)
    sweeps = plan(table, seeds, args.out, args.preset, args.overrides, pair_seeds, pair)
    failed = run_lanes(sweeps, args.jobs, args.out, args.script)
    if failed:
        print(f"demo: {failed} sweep(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
