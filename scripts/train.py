"""Train one task with one norm: python scripts/train.py task=cifar10 norm=rmsnorm preset=demo seed=0

`-m` with comma lists runs a sweep (Hydra multirun); one failed run does not stop the others, and the
command exits non-zero at the end naming the runs that failed, read from the runs' own files
(experiments/core/reporting/sweep.py), so the same holds under `hydra/launcher=local|slurm` (submitit).
"""

from __future__ import annotations

from experiments.core.training import malloc

if __name__ == "__main__":
    # before torch and Hydra load: the re-execution with steady malloc settings then costs no second import
    malloc.reexec_with_stable_malloc()

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.core.errors import NonFiniteLoss, user_message
from experiments.core.identity import run_identity
from experiments.core.records import write_error
from experiments.core.reporting import sweep
from experiments.core.training import distributed
from experiments.core.training.run import run_info, run_training

log = logging.getLogger("train")


def _identity(cfg: DictConfig) -> dict | None:
    """The failed run's identity without its config (which error.json holds whole), where one can be made."""
    try:
        return {k: v for k, v in run_identity(cfg).items() if k != "config"}
    except Exception:  # a config too broken to describe: the error itself says why
        return None


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    if not distributed.from_environment().is_main:  # under torchrun, rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_name = Path(hc.sweep.dir).name if multirun else "single"
    try:
        run_training(cfg, run_dir, sweep_name)
    except Exception as exc:
        message = user_message(exc)
        if distributed.from_environment().is_main:  # under torchrun, one error.json for the job
            write_error(run_dir, {"error": message or repr(exc), "user_error": message is not None,
                                  "traceback": traceback.format_exc(), "overrides": list(hc.overrides.task),
                                  # which row of which table it is: a diverged model is a result to show
                                  **run_info(cfg, sweep_name), "identity": _identity(cfg),
                                  "config": OmegaConf.to_container(cfg, resolve=True),
                                  "diverged_at_step": exc.step if isinstance(exc, NonFiniteLoss) else None})
        if message is None:
            if not multirun:
                raise
            log.exception("run %s crashed", run_dir)
        else:
            log.error("%s", message)
        if not multirun:
            sys.exit(1)


if __name__ == "__main__":
    main()
    if sweep.failed_runs:
        print(f"{len(sweep.failed_runs)} run(s) failed; each folder holds error.json (or was killed), "
              f"the sweep folder sweep_status.json:", *sweep.failed_runs, sep="\n  ", file=sys.stderr)
        sys.exit(1)
