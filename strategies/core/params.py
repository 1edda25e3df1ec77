"""An algorithm's parameters: one frozen dataclass, declared once, read by both halves.

The server strategy builds it from the ``strategy`` config group, the client from its job
(``job.params`` carries the same values), and ``conf/strategy/<name>.yaml`` must hold exactly
its fields and defaults (``tests/test_params.py`` fails otherwise). ``check`` runs on
construction, so an instance is always valid; ``warnings`` names settings that are valid but
probably not what the user meant.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

from strategies.core.job import ClientJob


def check_number(key: str, value: Any, ok: Callable[[float], bool], requirement: str) -> None:
    """A ValueError naming ``strategy.<key>`` unless ``value`` is a number (not a bool) for
    which ``ok`` holds; ``ok`` is asked only once ``value`` is a number, so a string gets this
    message rather than a comparison's TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise ValueError(f"strategy.{key}={value!r}: {requirement}")


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """A ValueError naming ``strategy.<key>`` and the allowed values unless ``value`` is one."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"strategy.{key}={value!r}: choose one of: {', '.join(choices)}")


def check_flag(key: str, value: Any) -> None:
    """A ValueError naming ``strategy.<key>`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"strategy.{key}={value!r}: must be true or false")


def check_count(key: str, value: Any, optional: str = "") -> None:
    """A ValueError naming ``strategy.<key>`` unless ``value`` is an integer >= 1 (or None when
    ``optional`` says what null means)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        either = f"null ({optional}) or " if optional else ""
        raise ValueError(f"strategy.{key}={value!r}: must be {either}an integer >= 1")


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of every algorithm's parameters (FedAvg has none)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming ``strategy.<key>``, the value and what is allowed."""

    def warnings(self) -> list[str]:
        """Valid settings that change nothing or cost more than they save (default: none)."""
        return []

    @classmethod
    def names(cls) -> list[str]:
        """The parameter names, as the ``strategy`` group spells them."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_values(cls, values: Mapping[str, Any], algorithm: str) -> Self:
        """The parameters ``values`` sets, defaults for the rest; an unknown key is a TypeError
        naming the nearest known ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            near = difflib.get_close_matches(unknown[0], cls.names(), n=2)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise TypeError(
                f"strategy {algorithm!r} got unknown parameters {unknown}{hint} "
                f"(it takes: {', '.join(cls.names()) or 'none'})"
            )
        return cls(**values)

    @classmethod
    def from_job(cls, job: ClientJob) -> Self:
        """The parameters a client's job carries (null values travel as missing keys; per-round
        keys a strategy adds are not parameters and stay in ``job.params``)."""
        return cls(**{key: job.params[key] for key in cls.names() if key in job.params})

    def values(self) -> dict[str, Any]:
        """Every parameter by name."""
        return {key: getattr(self, key) for key in self.names()}
