"""Errors a user can fix, told in one short message instead of a traceback."""

from __future__ import annotations

from rmsnorm import NormConfigError


class UserError(Exception):
    """A mistake in the input (config, data, paths) with a message that says what to do."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or inf: the model diverged (a result the report shows, not hides)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Preempted(UserError):
    """SIGTERM or SIGUSR1 (a scheduler's warning) arrived: the run saved a checkpoint and stopped."""


class MissingData(UserError):
    """A data set is absent or unreadable where the config points."""


def user_message(exc: BaseException) -> str | None:
    """The message of the first user error in the exception's cause chain (Hydra wraps what it instantiates)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (UserError, NormConfigError)):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None
