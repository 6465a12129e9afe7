"""Prepare a task's data before training: python scripts/prepare.py task=<task> preset=<smoke|demo|paper>

Takes the same overrides as scripts/train.py and writes everything training reads into
data_dir/<task.data_subdir>: the generated set of the demo and smoke presets, or the real data set for
preset=paper (downloaded once; needs internet), plus what is derived from it (CIFAR-10's ZCA and its
whitened images, translation's BPE model and ids). Training only reads. Several processes preparing one
folder at once take turns on a lock, and every file appears atomically, so a parallel sweep cannot corrupt it.
"""

from __future__ import annotations

import logging
import sys

from experiments.core.errors import user_message
from experiments.core.training.config import compose_config
from experiments.core.training.run import prepare_task_data

log = logging.getLogger("prepare")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        root = prepare_task_data(compose_config(argv))
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"prepared {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
