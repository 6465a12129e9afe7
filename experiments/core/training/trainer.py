"""The training loop: steps, periodic evaluation, timing, checkpoints and the curve, for any Task."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from experiments.core.atomic import save_json, save_torch, write_or_explain
from experiments.core.data import loading
from experiments.core.errors import NonFiniteLoss, Preempted, UserError
from experiments.core.identity import refusal as identity_refusal
from experiments.core.records import CHECKPOINT_FILE, PREEMPTED_FILE, PREVIOUS_CHECKPOINT_FILE, MetricsFile
from experiments.core.training import distributed, seeding
from experiments.core.training.loggers import NullLogger
from experiments.core.training.task import Task
from experiments.core.training.timing import StepTimer

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    epochs: float | None = None
    max_steps: int | None = None
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 1000
    timing_warmup: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        """Settings that would train nothing, or divide by zero at a boundary, fail before any data is read."""
        for key in ("epochs", "max_steps"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"train.{key}={value}: must be positive (or null, with the other of train.epochs "
                                "and train.max_steps set)")
        if self.epochs is None and self.max_steps is None:
            raise UserError("train.epochs and train.max_steps are both null: set one (the preset normally does)")
        for key in ("log_every", "eval_every", "ckpt_every"):
            if not getattr(self, key) >= 1:
                raise UserError(f"train.{key}={getattr(self, key)}: must be a whole number of steps >= 1")
        if self.timing_warmup < 0:
            raise UserError(f"train.timing_warmup={self.timing_warmup}: must be >= 0")

    def total_steps(self, steps_per_epoch: int) -> int:
        limits = []
        if self.epochs is not None:
            limits.append(math.ceil(self.epochs * steps_per_epoch))
        if self.max_steps is not None:
            limits.append(int(self.max_steps))
        if not limits:
            raise ValueError("train.epochs or train.max_steps must be set")
        return min(limits)


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Trainer:
    def __init__(self, task: Task, settings: TrainSettings, run_dir: Path, device: torch.device, logger=None,
                 group: distributed.Group = distributed.SINGLE, identity: dict | None = None,
                 resume_anyway: bool = False):
        self.task = task
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.device = device
        self.group = group
        self.logger = logger or NullLogger()
        # under torchrun the steps go through DistributedDataParallel (which broadcasts rank 0's weights now);
        # evaluation, checkpoints and the task's own code between steps see the plain module
        self._ddp = None
        if group.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = DistributedDataParallel(task.model, device_ids=[device] if device.type == "cuda" else None)
        self.metrics = MetricsFile(self.run_dir)
        self.timer = StepTimer(device, settings.timing_warmup)
        self.progress = Progress()
        self.checkpoint_path = self.run_dir / CHECKPOINT_FILE
        self.previous_checkpoint_path = self.run_dir / PREVIOUS_CHECKPOINT_FILE
        # which run this is (experiments/core/identity.py): saved in each checkpoint, checked on resume
        self.identity = identity
        self.resume_anyway = resume_anyway
        self.last_eval: dict[str, float] = {}
        self._loss_sum = torch.zeros((), device=device)
        self._loss_count = 0
        self._stop_signal: int | None = None

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM, SIGUSR1 and SIGUSR2 (a scheduler's warnings: SLURM's, submitit's) end the run at the next
        step with a checkpoint; a handler that was there before (submitit's requeue) is then called."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = [signal.SIGTERM] + [getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n)]
        previous = {sig: signal.getsignal(sig) for sig in wanted}
        self._previous_handlers = previous

        def handler(signum, frame):
            self._stop_signal = signum

        for sig in wanted:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.timer.account_gap()  # the evaluation just done belongs to the saved wall clock
        # every rank's random state (dropout draws differ between ranks), written by rank 0 alone
        rng = distributed.gather_objects(seeding.rng_state(), self.group)
        failure = None
        if self.group.is_main:
            try:
                write_or_explain(lambda: save_torch(
                {
                    "progress": vars(self.progress).copy(),
                    "task": self.task.state_dict(),
                    "timer": self.timer.state_dict(),
                    "rng": rng[0] if len(rng) == 1 else rng,
                    "last_eval": self.last_eval,
                    "world_size": self.group.world,
                    "identity": self.identity,
                },
                self.checkpoint_path, keep_previous=self.previous_checkpoint_path,
                ), self.checkpoint_path, f"at step {self.progress.step}")
            except UserError as exc:
                failure = exc
        # every rank learns whether rank 0's write failed (and waits for it): all stop together, none hangs
        if distributed.any_rank(failure is not None, self.group):
            raise failure or UserError(f"rank 0 could not write {self.checkpoint_path}; its log says why")

    def _load_checkpoint(self) -> tuple[Path, dict] | None:
        """The checkpoint to resume from and its contents, None where there is none; a damaged one ends the run
        in one line saying what to do."""
        path, previous = self.checkpoint_path, self.previous_checkpoint_path
        if not path.exists() and previous.exists():  # stopped between the two renames of a save
            log.info("%s is missing; resuming from %s", path, previous)
            path = previous
        if not path.exists():
            return None
        try:
            # on the CPU: the random states must stay CPU tensors; the model and optimiser copy to their devices
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "task" not in state:
                raise ValueError("it holds no training state")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            before = (f"the one before it, {previous.name}, is kept: rename it to {path.name} to resume from "
                      "there, " if path != previous and previous.exists() else "")
            raise UserError(f"{path} cannot be read, it is truncated or corrupt ({first}); {before}or delete it "
                            "to start afresh, or use another hydra.run.dir") from exc
        saved = state.get("identity")
        if saved is not None and self.identity is not None and not self.resume_anyway:
            message = identity_refusal(saved, self.identity, str(path))
            if message:
                raise UserError(message)
        return path, state

    def try_resume(self) -> bool:
        loaded = self._load_checkpoint()
        if loaded is None:
            log.info("resume=true but no checkpoint in %s: starting from step 0", self.run_dir)
            return False  # _fit starts the curve afresh
        path, state = loaded
        self.task.load_state_dict(state["task"])
        self.timer.load_state_dict(state["timer"])
        rng = state["rng"]
        if isinstance(rng, list):  # one per rank; a resume on another number of processes reuses them in turn
            rng = rng[self.group.rank % len(rng)]
        seeding.set_rng_state(rng)
        self.progress = Progress(**state["progress"])
        self.last_eval = state["last_eval"]
        if self.group.is_main:
            self.metrics.truncate_after(self.progress.step)
        log.info("resumed from %s at step %d", path, self.progress.step)
        return True

    # ---- boundaries --------------------------------------------------------------------------------------
    def _flush_loss(self) -> float | None:
        if not self._loss_count:
            return None
        # the mean over ranks: every rank sees the same value, so a NaN on one stops all of them together
        loss = distributed.mean_over_ranks(self._loss_sum / self._loss_count, self.group).item()
        self._loss_sum.zero_()
        self._loss_count = 0
        if not math.isfinite(loss):
            where = (
                f"the last good checkpoint is {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else "no checkpoint was written before it"
            )
            raise NonFiniteLoss(
                f"training loss became {loss} by step {self.progress.step}; {where}. "
                "Lower the learning rate or check the data, then rerun (resume=true continues from the checkpoint).",
                self.progress.step,
            )
        return loss

    def _record(self, values: dict) -> None:
        record = {
            "step": self.progress.step,
            "epoch": self.progress.step / self.task.steps_per_epoch,
            "train_seconds": round(self.timer.train_seconds, 4),
            **values,
        }
        if not self.group.is_main:
            return
        self.metrics.append(record)
        self.logger.log({k: v for k, v in record.items() if k != "step"}, step=self.progress.step)

    def _evaluate(self) -> dict[str, float]:
        self.task.model.eval()
        with torch.no_grad():
            result = self.task.evaluate()
        self.task.model.train()
        self.last_eval = result
        return result

    def _boundary_work(self, total: int, bar) -> None:
        """Logging, evaluation and checkpoints due after this step, outside the timed region."""
        s, step = self.settings, self.progress.step
        last = step >= total
        log_now, eval_now, ckpt_now = step % s.log_every == 0, step % s.eval_every == 0, step % s.ckpt_every == 0
        if not (log_now or eval_now or ckpt_now or last):
            return
        self.timer.pause()
        values = {}
        loss_value = self._flush_loss()
        if loss_value is not None:
            values["train_loss"] = loss_value
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if eval_now or last:
            values.update({f"eval/{k}": v for k, v in self._evaluate().items()})
        self._record(values)
        if ckpt_now or last:
            self.save_checkpoint()

    def _stop_for_signal(self) -> None:
        self.timer.pause()
        loss_value = self._flush_loss()
        if loss_value is not None:
            self._record({"train_loss": loss_value})
        self.save_checkpoint()
        # a requeued job starts with the same overrides (resume=false): this marker makes it resume
        if self.group.is_main:
            save_json({"signal": signal.Signals(self._stop_signal).name, "step": self.progress.step},
                      self.run_dir / PREEMPTED_FILE)
        before = getattr(self, "_previous_handlers", {}).get(self._stop_signal)
        if callable(before):
            # submitit's handler pickles the job for requeueing and exits the process; where it returns (SIGTERM
            # is only logged by submitit), the run stops below as it would without it
            before(self._stop_signal, None)
        raise Preempted(
            f"stopped by signal {signal.Signals(self._stop_signal).name} at step {self.progress.step}; the "
            f"checkpoint {self.checkpoint_path} holds it: rerun with resume=true and the same output dir to continue"
        )

    # ---- the loop ----------------------------------------------------------------------------------------
    def _step(self, batch) -> torch.Tensor:
        # under torchrun the loss goes through the DDP wrapper (made once): gradients averaged over ranks
        return self.task.train_step(batch, self._ddp)

    def _stop_requested(self) -> bool:
        """A signal seen by this process or, under torchrun, by any rank: all stop at the same step, and all
        act on the same signal (the largest number seen), so rank 0 hands the right one to submitit."""
        if not self.group.enabled:
            return self._stop_signal is not None
        agreed = distributed.max_over_ranks(int(self._stop_signal or 0), self.group)
        if agreed:
            self._stop_signal = agreed
        return bool(agreed)

    def fit(self) -> dict[str, float]:
        with self._stop_on_signals():
            return self._fit()

    def _fit(self) -> dict[str, float]:
        s, task, p = self.settings, self.task, self.progress
        total = s.total_steps(task.steps_per_epoch)
        if p.step == 0 and self.group.is_main:
            # a fresh start: whatever an earlier attempt in this folder logged (killed before its first
            # checkpoint, or rerun without resume=true) is not this run's curve
            self.metrics.path.unlink(missing_ok=True)
            if self.identity is not None:
                self.metrics.start({k: v for k, v in self.identity.items() if k != "config"})
        task.model.train()
        bar = tqdm(total=total, initial=p.step, disable=not (s.progress and self.group.is_main), desc="train",
                   dynamic_ncols=True, leave=False)
        while p.step < total:
            task.on_epoch_start(p.epoch)
            batches = loading.background(functools.partial(task.batches, p.epoch, p.batch_in_epoch),
                                         int(getattr(task.cfg, "loader_workers", 0)), self.device.type == "cuda")
            for batch in batches:
                # this rank's slice first, then the copy: a rank moves only what it trains on
                batch = loading.to_device(distributed.shard(batch, task.batch_dims, self.group), self.device)
                self.timer.begin_step()
                loss = self._step(batch)
                self.timer.end_step()
                self._loss_sum += loss
                self._loss_count += 1
                p.step += 1
                p.batch_in_epoch += 1
                bar.update(1)
                if p.batch_in_epoch == task.steps_per_epoch:
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                self._boundary_work(total, bar)
                if self._stop_requested() and p.step < total:
                    bar.close()
                    self._stop_for_signal()
                if p.step >= total or p.batch_in_epoch == 0:
                    break
        bar.close()
        self.timer.account_gap()
        return self.last_eval
