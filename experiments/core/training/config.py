"""The configuration's contract with the code.

- `norm=<name>` options come from the norm registry (`rmsnorm.registry`), so a registered norm is
  selectable with no config file of its own; the task sets what differs for it (pRMSNorm's p).
- A task's config is checked at start-up against its schema (`Task.Config`, a dataclass): a missing key,
  a wrong type, a misspelt key or a norm that is not registered fails before any data is read.
- What a run's preset or overrides changed against `preset=paper` is computed, not written by hand.
"""

from __future__ import annotations

import functools
from dataclasses import fields, is_dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.core.errors import UserError
from rmsnorm import DEFAULT_P, norm_names

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
#: settings that change what is logged or saved, not what is trained
BOOKKEEPING = {"train.progress", "train.log_every", "train.ckpt_every", "train.eval_every", "task.make_target",
               "task.loader_workers"}


def register_norm_configs() -> None:
    """One `norm=<name>` option per registered norm (call again after registering a new one)."""
    store = ConfigStore.instance()
    for name in norm_names():
        # eps null: the task's upstream value (task.norm_eps) where it names one, else the norm's own default
        # impl: fused (the fastest kernel), composite (the tensor ops the paper's frameworks ran) or torch
        node = {"_target_": "rmsnorm.NormSpec", "name": name, "eps": None, "p": DEFAULT_P,
                "affine": True, "bias": None, "impl": "fused"}
        store.store(group="norm", name=name, node=node)


register_norm_configs()


def norm_spec(cfg: DictConfig):
    """The run's NormSpec: `norm.eps` where set on the command line, else the task's upstream eps for this norm
    (`task.norm_eps`, e.g. Nematus' 1e-5), else the norm's own default."""
    import hydra

    overrides = {}
    if cfg.norm.get("eps") is None:
        eps = (cfg.task.get("norm_eps") or {}).get(cfg.norm.name)
        if eps is not None:
            overrides["eps"] = float(eps)
    return hydra.utils.instantiate(cfg.norm, **overrides)


def typed_task_config(schema: type, task_cfg: DictConfig) -> DictConfig:
    """The task's resolved config merged into its schema; a UserError saying what does not fit."""
    name = task_cfg.get("name", "?")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(task_cfg, resolve=True))
        missing = sorted(_missing_keys(typed))
    except OmegaConfBaseException as exc:
        raise UserError(f"task={name}: its config does not fit {schema.__module__}.{schema.__qualname__}: "
                        f"{str(exc).splitlines()[0]}") from exc
    if missing:
        raise UserError(f"task={name}: its config leaves {', '.join(missing)} unset; set them in "
                        f"configs/task/{name}.yaml or the preset")
    bad = [f"{key}={value}" for key, value in _sizes_and_rates(OmegaConf.to_container(typed), "task")
           if not (isinstance(value, (int, float)) and value > 0)]
    if bad:
        raise UserError(f"task={name}: {', '.join(bad)}: batch sizes, learning rates and accumulation counts "
                        "must be positive numbers")
    unknown = [n for n in typed.norms if n not in norm_names()]
    if unknown:
        raise UserError(f"task={name}: task.norms lists {', '.join(unknown)}, which no norm is registered as; "
                        f"registered: {', '.join(norm_names())}")
    return typed


def _sizes_and_rates(node, prefix: str):
    """(key, value) of every batch size and learning rate in a task config: keys ending in batch_size or
    batch_tokens, keys named lr or accumulate and the values of lr_by_* tables."""
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            if key.startswith("lr_by_"):
                yield from ((f"{path}.{k}", v) for k, v in value.items())
            else:
                yield from _sizes_and_rates(value, path)
        elif (key.endswith(("batch_size", "batch_tokens")) or key in ("lr", "accumulate")) and value is not None:
            yield path, value


def _missing_keys(cfg: DictConfig, prefix: str = "task") -> list[str]:
    out = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}.{key}")
        elif isinstance(cfg[key], DictConfig):
            out += _missing_keys(cfg[key], f"{prefix}.{key}")
    return out


def schema_keys(schema: type) -> list[str]:
    """The keys a schema defines, for docs and errors."""
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def compose_config(overrides: list[str]) -> DictConfig:
    """configs/train.yaml composed with these overrides, inside a running Hydra app or outside one."""
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def _diff(paper, ours, key: str):
    """'key: paper -> ours' lines, descending into sections both sides have."""
    if isinstance(paper, dict) and isinstance(ours, dict):
        for sub in sorted(set(paper) | set(ours)):
            yield from _diff(paper.get(sub, "(unset)"), ours.get(sub, "(unset)"), f"{key}.{sub}")
    elif paper != ours and key not in BOOKKEEPING:
        yield f"{key}: {_short(paper)} -> {_short(ours)}"


@functools.lru_cache(maxsize=64)
def _paper_sections(task: str, norm: str) -> dict:
    """preset=paper's task, train and norm sections (composing them costs half a second: a process that runs
    sweep after sweep composes each task and norm once). Read only."""
    paper = compose_config([f"task={task}", f"norm={norm}", "preset=paper"])
    return {section: OmegaConf.to_container(paper[section], resolve=True) for section in ("task", "train", "norm")}


def differences_from_paper(cfg: DictConfig) -> list[str]:
    """'key: paper -> this run' for every training setting of this run's task, train loop and norm that
    differs from `preset=paper` (bookkeeping such as log intervals left out)."""
    paper = _paper_sections(cfg.task.name, cfg.norm.name)
    lines = []
    for section in ("task", "train", "norm"):
        lines += _diff(paper[section], OmegaConf.to_container(cfg[section], resolve=True), section)
    return lines


def _short(value) -> str:
    text = "null" if value is None else str(value).replace("'", "")
    return text if len(text) <= 80 else text[:77] + "..."
