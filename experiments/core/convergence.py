"""The one convergence rule every run is held to (docs/demo.md, "Convergence"): a run *converged* when its
logged training loss fell below `SHARE` of its first logged value. A run that never did sat on its starting
plateau, and its score says when the seed happened to leave it, not what the norm can do; the report marks it.

Each run's summary.json records the rule's outcome (`convergence`); the report reads it back, and computes it
from the run's metrics.jsonl for summaries written before the rule existed."""

from __future__ import annotations

SHARE = 0.8
RULE = f"training loss below {SHARE:g} x its first logged value"


def convergence(records: list[dict]) -> dict:
    """{"rule", "share", "first_step", "first_loss", "last_loss", "at_step"}: at_step is the first logged step
    whose training loss is below SHARE x the first logged one, None if none is (or nothing was logged)."""
    curve = [(int(r["step"]), float(r["train_loss"])) for r in records if r.get("train_loss") is not None]
    if not curve:
        return {"rule": RULE, "share": SHARE, "first_step": None, "first_loss": None, "last_loss": None,
                "at_step": None}
    first_step, first = curve[0]
    at = next((step for step, loss in curve[1:] if loss < SHARE * first), None)
    return {"rule": RULE, "share": SHARE, "first_step": first_step, "first_loss": first, "last_loss": curve[-1][1],
            "at_step": at}


def converged(record: dict) -> bool | None:
    """Whether a summary's run met the rule; None where the summary carries no outcome."""
    outcome = record.get("convergence")
    return None if outcome is None else outcome.get("at_step") is not None
