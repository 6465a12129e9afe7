"""A Hydra callback the tests add to a training command to stand for a scheduler or a crash: after training step
N the process sends itself a signal (SIGUSR2: submitit's pre-emption warning; SIGKILL: a crash). It lives here,
not in the trainer, so production code carries no test hook; the job process imports it from the repository
(tests put the repository on PYTHONPATH), also under submitit and torchrun.

    +hydra.callbacks.fault._target_=tests.fault_injection.SignalAfterStep +hydra.callbacks.fault.at=SIGKILL@7
"""

from __future__ import annotations

import os
import signal

from hydra.experimental.callback import Callback


class SignalAfterStep(Callback):
    def __init__(self, at: str):
        name, _, step = at.partition("@")
        self.signal, self.step = getattr(signal, name), int(step)

    def on_job_start(self, config, **kwargs) -> None:
        from experiments.core.training.trainer import Trainer

        real_step, fault = Trainer._step, self

        def step(trainer, batch):
            loss = real_step(trainer, batch)
            if trainer.progress.step + 1 == fault.step:  # the step just taken is number `fault.step`
                os.kill(os.getpid(), fault.signal)
            return loss

        Trainer._step = step


def overrides(at: str) -> list[str]:
    """The command-line overrides that add the callback."""
    return ["+hydra.callbacks.fault._target_=tests.fault_injection.SignalAfterStep", f"+hydra.callbacks.fault.at={at}"]
