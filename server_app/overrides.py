"""The command line checked before Hydra sees it: typos get the nearest key or option, and a run
folder that cannot be used is named in one line.

Hydra answers ``num_round=5`` with "To append to your config use +num_round=5" and
``strategy=fedpn`` with the full list of choices; neither says what was probably meant.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig

from server_app.settings import compose_config

GROUP_ORDER = ["strategy", "model", "dataset", "partition", "engine"]
RUN_FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir")
# Hydra's flags that take a value (``--cfg job``, ``--info config``): that value is no override
VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
VALUED_FLAGS |= {"--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def groups() -> dict[str, list[str]]:
    """Each config group of conf/ with its options (the yaml files' names)."""
    root = importlib.resources.files("conf")
    found = {
        group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if _yaml(f))
        for group in root.iterdir()
        if group.is_dir() and any(_yaml(f) for f in group.iterdir())
    }
    return {g: found[g] for g in sorted(found, key=lambda g: [*GROUP_ORDER, g].index(g))}


def _yaml(entry: object) -> bool:
    return entry.is_file() and entry.name.endswith(".yaml")  # type: ignore[attr-defined]


def nearest(word: str, choices: list[str], n: int = 2) -> list[str]:
    """The choices closest to ``word`` (difflib's ratio; else those sharing its first letters)."""
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    return close or [c for c in choices if c.startswith(word[:3])][:n]


def _paths(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _paths(value, f"{prefix}{key}.")


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def overrides_of(args: list[str]) -> list[str]:
    """The overrides among a command line's arguments (flags and their values left out)."""
    overrides, previous = [], ""
    for arg in args:
        flag_value = previous in VALUED_FLAGS and "=" not in arg
        if not arg.startswith("-") and not flag_value:
            overrides.append(arg)
        previous = arg
    return overrides


def check_command_line(args: list[str]) -> str | None:
    """What is wrong with the overrides in ``args`` (flags are skipped), or None."""
    overrides = overrides_of(args)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        return f"cannot read the command line: {err}"
    options = groups()
    chosen, swept = [], set()
    for override in parsed:
        key = override.key_or_group
        if key not in options or override.is_delete():
            continue
        for value in _values(override):
            if value not in options[key]:
                near = nearest(value, options[key])
                hint = f"did you mean {' or '.join(near)}? " if near else ""
                return f"{key}={value}: no such {key}; {hint}choose from {', '.join(options[key])}"
        if override.is_sweep_override():
            swept.add(key)  # its keys depend on the option: each job's own check names them
        else:
            chosen.append(f"{key}={_values(override)[0]}")
    known = sorted(_paths(compose_config(chosen)))
    for override in parsed:
        key = override.key_or_group
        top = key.split(".")[0]
        if key in options or top == "hydra" or top in swept or key in known:
            continue
        near = nearest(key, known)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        return f"unknown key {key}; {hint}`fedsparse --cfg job` prints every key"
    multirun = "--multirun" in args or "-m" in args
    for override in parsed:
        key, value = override.key_or_group, _values(override)[0]
        if key in RUN_FOLDER_KEYS and not override.is_sweep_override() and "${" not in value:
            problem = unusable_folder(Path(value))
            if problem:
                return f"{key}={value}: {problem}"
    if not multirun and any(_resumes(o) for o in parsed):
        return missing_run_to_resume(parsed)
    return None


def _resumes(override: Override) -> bool:
    return override.key_or_group == "resume" and _values(override)[0].lower() == "true"


def missing_run_to_resume(parsed: list[Override]) -> str | None:
    """Why ``resume=true`` has no run to continue (no hydra.run.dir, or no such folder), or
    None; checked before Hydra would make the folder."""
    folders = [_values(o)[0] for o in parsed if o.key_or_group == "hydra.run.dir"]
    if not folders:
        return (
            "resume=true continues the run in hydra.run.dir, but none is given; add "
            "hydra.run.dir=<the run's folder> (outputs/<date>/<time>)"
        )
    folder = folders[-1]
    if "${" not in folder and not Path(folder).expanduser().is_dir():
        return (
            f"resume=true hydra.run.dir={folder}: no such folder; pass the folder of the run to "
            "continue (its path is in the run's last line), or drop resume=true"
        )
    return None


def unusable_folder(folder: Path) -> str | None:
    """Why a run could not write into ``folder``, or None; checked in the folder or, when it is
    missing, in its nearest existing parent, so that nothing is left behind."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"cannot write there ({existing} is not a folder); choose a folder you can write to"
    probe = existing / f".fedsparse-probe-{uuid.uuid4().hex}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        return f"cannot write there ({err.strerror or err}); choose a folder you can write to"
    if not os.access(existing, os.W_OK):
        return "cannot write there; choose a folder you can write to"
    return None
