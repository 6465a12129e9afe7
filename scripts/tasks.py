"""What the configs declare, for the Makefile and the shell: python scripts/tasks.py list | norms <task> | table

`list` prints the tasks (one per configs/task/*.yaml); `norms <task>` prints the task's paper rows
(`task.norms`) as the comma list a Hydra sweep takes; `table` prints every task with its norms, one
"<task> <norms>" line each (one process: each start of this script costs seconds of imports).
"""

from __future__ import annotations

import sys

from experiments.core.training.config import CONFIG_DIR, compose_config


def task_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def main(argv: list[str]) -> int:
    if argv == ["list"]:
        print(" ".join(task_names()))
    elif len(argv) == 2 and argv[0] == "norms" and argv[1] in task_names():
        print(",".join(compose_config([f"task={argv[1]}"]).task.norms))
    elif argv == ["table"]:
        for task in task_names():
            print(task, ",".join(compose_config([f"task={task}"]).task.norms))
    else:
        print(__doc__.strip(), f"\ntasks: {', '.join(task_names())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
