"""``resume=true`` continues a run with the run's own settings, not today's defaults.

The run folder's config.yaml is the run. A key given on the command line may differ from it only
if it never changes a number (``engine``, ``tracking``, ...) or is ``num_rounds`` (raising it
extends the run); any other difference is refused, naming the key and both values. Keys not
given on the command line keep the run's values, so ``fedsparse resume=true
hydra.run.dir=<run>`` is the whole command that continues a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from server_app.results import NUMBER_NEUTRAL_KEYS, flatten_config
from server_app.settings import ConfigError

CONFIG_FILE = "config.yaml"  # a run folder's resolved config: the run itself
FREE_KEYS = ("resume", *NUMBER_NEUTRAL_KEYS)  # taken from the command line (or its defaults)


def given_keys(task_overrides: Iterable[str]) -> list[str]:
    """The keys (or groups) a command line's overrides set: ``+a.b=1`` -> ``a.b``."""
    return [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]


def _given(key: str, given: list[str]) -> bool:
    return any(key == g or key.startswith(f"{g}.") for g in given)


def resumed_config(cfg: DictConfig, run_dir: Path, task_overrides: Iterable[str]) -> DictConfig:
    """``cfg`` with every setting the command line did not give taken from the run in
    ``run_dir``; a given setting that would change the run's numbers is a ConfigError. A folder
    without config.yaml is returned as is (the checkpoint check then says what is missing)."""
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.exists():
        return cfg
    stored = flatten_config(OmegaConf.to_container(OmegaConf.load(stored_path)))
    current = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    given = given_keys(task_overrides)
    refused = []
    for key in sorted(stored.keys() | current.keys()):
        if stored.get(key) == current.get(key) or key.split(".")[0] in FREE_KEYS:
            continue
        if not _given(key, given):
            continue  # a default that differs from the run's: the run's value stands
        if key != "num_rounds":
            refused.append(f"{key} (the run has {stored.get(key)!r}, given {current.get(key)!r})")
    if refused:
        raise ConfigError(
            f"resume=true continues the run in {run_dir} with its own settings, but the command "
            f"line changes {'; '.join(refused)}; drop those overrides, or start a new run in "
            "another hydra.run.dir"
        )
    merged = {k: v for k, v in stored.items() if k.split(".")[0] not in FREE_KEYS}
    merged.update({k: v for k, v in current.items() if k.split(".")[0] in FREE_KEYS})
    merged.update({k: v for k, v in current.items() if k in added_settings(stored, current)})
    if _given("num_rounds", given):
        merged["num_rounds"] = current["num_rounds"]
    resumed = OmegaConf.create(_nest(merged))
    OmegaConf.set_struct(resumed, True)
    return resumed


def added_settings(stored: Iterable[str], current: Iterable[str]) -> set[str]:
    """Top-level settings a run's config lacks because fedsparse added them since (e.g.
    ``eval_every``): a resumed run takes their defaults, which keep what the run did before."""
    return {k for k in current if "." not in k} - set(stored)


def _nest(flat: dict[str, object]) -> dict[str, object]:
    nested: dict[str, object] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    return nested


def rounds_note(run_dir: Path, num_rounds: int) -> str:
    """``extending 10 → 20 rounds`` when a resumed run's num_rounds differs from its config's."""
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.exists():
        return ""
    before = int(OmegaConf.load(stored_path).num_rounds)
    if before == num_rounds:
        return ""
    verb = "extending" if num_rounds > before else "shortening"
    return f"{verb} {before} → {num_rounds} rounds"
