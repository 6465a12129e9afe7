"""A run's identity: what makes two runs the same row of a table, so that a folder, a checkpoint or a summary
can never be taken for another run's.

The identity is the run's resolved config without the keys that may change when a run is continued (how long
it trains, how often it logs, evaluates and saves, where the data lies, which device, the logger), hashed,
together with its task, norm, preset and seed, and what produced it (commit, versions: `provenance.stamp`).
Every checkpoint, `summary.json`, `error.json`, the `metrics.jsonl` header and the run folder's
`identity.json` carry it; a resume whose config differs is refused at start-up naming the keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.provenance import stamp

IDENTITY_FILE = "identity.json"
#: keys (and sections) a continued run may change: more steps, other intervals, another device or data path
RESUMABLE = ("resume", "resume_anyway", "train.max_steps", "train.epochs", "train.log_every", "train.eval_every",
             "train.ckpt_every", "train.progress", "train.timing_warmup", "logger", "data_dir", "device",
             "task.loader_workers", "task.make_target")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for every leaf of nested dicts (lists stay values)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


#: of those, what still makes a finished result another one: a table never averages runs that differ here
RESULT_KEYS = ("train.max_steps", "train.epochs", "device")


def _left_out(key: str, keep: tuple[str, ...]) -> bool:
    return any((key == r or key.startswith(r + ".")) and r not in keep for r in RESUMABLE)


def identity_config(resolved: dict, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flattened config that decides what a run trains (the resumable keys left out, but those in `keep`)."""
    return {k: v for k, v in sorted(flatten(resolved).items()) if not _left_out(k, keep)}


def config_hash(resolved: dict, keep: tuple[str, ...] = (), drop: tuple[str, ...] = (), extra: str = "",
                length: int = 16) -> str:
    """sha256 of identity_config(resolved, keep) without the keys in `drop`, with `extra` appended."""
    cfg = {k: v for k, v in identity_config(resolved, keep).items() if k not in drop}
    text = json.dumps(cfg, sort_keys=True, default=str) + extra
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_identity(cfg: DictConfig) -> dict:
    """Task, norm (p, eps), preset, seed, the config hash and the keys behind it, and what produced the run."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    norm = resolved.get("norm", {})
    return {"task": cfg.task.name, "norm": norm.get("name"), "norm_p": norm.get("p"), "norm_eps": norm.get("eps"),
            "norm_impl": norm.get("impl", "fused"),
            "preset": cfg.preset.name, "seed": cfg.seed, "config_hash": config_hash(resolved),
            "config": identity_config(resolved), **stamp()}


HEADLINE = {"task": "task.name", "norm": "norm.name", "norm_impl": "norm.impl", "preset": "preset.name",
            "seed": "seed"}


def differences(saved: dict, current: dict, limit: int = 4) -> list[str]:
    """'key: saved -> current' for each key whose value differs between two identities' configs: the task,
    norm, preset and seed first, under those names."""
    a, b = saved.get("config", {}), current.get("config", {})
    out = [f"{name}: {_short(saved.get(name))} -> {_short(current.get(name))}" for name in HEADLINE
           if saved.get(name) != current.get(name)]
    out += [f"{k}: {_short(a.get(k, '(unset)'))} -> {_short(b.get(k, '(unset)'))}"
            for k in sorted(set(a) | set(b))
            if k not in HEADLINE.values() and a.get(k, "(unset)") != b.get(k, "(unset)")]
    if len(out) > limit:
        out = out[:limit] + [f"and {len(out) - limit} more"]
    return out


def _short(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_folder_identity(run_dir: Path) -> dict | None:
    path = Path(run_dir) / IDENTITY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def refusal(saved: dict, current: dict, what: str) -> str | None:
    """The one-line refusal to continue `what` (a folder's or checkpoint's run) as this run, or None when they
    are the same run."""
    if saved.get("config_hash") == current["config_hash"]:
        return None
    diff = "; ".join(differences(saved, current))
    return (f"{what} was written by another run ({diff}): resuming would report its weights as this run's. "
            "Use another hydra.run.dir (or resume=false to start afresh there), or resume_anyway=true to "
            "continue from it all the same")
