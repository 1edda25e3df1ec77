"""The strategy API's contract: every algorithm's yaml is its Params dataclass, the runtime
names no algorithm, the simple path needs few names, and a strategy without a cohort sum runs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

import strategies
import strategies.api
from server_app.settings import ConfigError, compose_config, strategy_params, validate
from server_app.testing import Federation
from strategies.api import (
    ARRAYS,
    Algorithm,
    ClientUpdate,
    FedSparseStrategy,
    ReplyError,
    register_algorithm,
    to_array_record,
    to_numpy_dict,
)
from strategies.core.wire import unpack_clients
from tests.runs import SHIPPED_STRATEGIES

REPO = Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_STRATEGIES


@pytest.mark.parametrize("name", SHIPPED)
def test_the_yaml_holds_exactly_the_dataclass_defaults(name: str) -> None:
    """conf/strategy/<name>.yaml and the algorithm's Params must not disagree (test-only
    algorithms, registered by other test modules, have no yaml)."""
    params = strategies.get_algorithm(name).params
    yaml = strategy_params(compose_config([f"strategy={name}"]))
    assert yaml == params().values()


def test_an_unknown_parameter_names_the_nearest_known_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameters \['dleta'\]; did you mean delta"):
        validate(compose_config(["strategy=lbgm", "+strategy.dleta=0.3"]))


def test_params_are_checked_when_built_on_either_end() -> None:
    params = strategies.get_algorithm("lips").params
    with pytest.raises(ValueError, match=r"strategy.d0=0: must be in \(0, 1\]"):
        params(d0=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params().d0 = 0.3


def _algorithm_words() -> set[str]:
    return set(SHIPPED)


def _code_facts(path: Path) -> tuple[set[str], set[str], set[str]]:
    """Imported modules, identifiers, and string constants that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    imports, names, strings = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            strings.add(node.value)
    return imports, names, strings


@pytest.mark.parametrize(
    "path", sorted([*REPO.glob("server_app/*.py"), *REPO.glob("client_app/*.py")]), ids=str
)
def test_the_runtime_names_no_algorithm(path: Path) -> None:
    """server_app/ and client_app/ import no algorithm module, branch on no algorithm's name
    and hold no algorithm-named identifier (their prose and examples may name them); the
    client side reads the registry's record, never the server class."""
    imports, names, strings = _code_facts(path)
    words = _algorithm_words()
    algorithm_modules = {m for m in imports if m.split(".")[1:2] and m.split(".")[1] in words}
    assert not {m for m in algorithm_modules if m.startswith("strategies.")}
    assert not {n for n in names if any(w in n.lower() for w in words)}
    assert not strings & words
    if path.parent.name == "client_app":
        assert "server" not in names


def test_the_simple_path_needs_at_most_twenty_names() -> None:
    assert len(strategies.api.__all__) <= 20
    assert all(hasattr(strategies.api, name) for name in strategies.api.__all__)


def test_no_algorithm_needs_an_import_line_to_register() -> None:
    source = (REPO / "strategies" / "__init__.py").read_text()
    assert not {w for w in _algorithm_words() if re.search(rf"\b{w}\b", source)}
    assert set(SHIPPED) <= set(strategies.available_algorithms())


def _block(markdown: str, heading: str, language: str, index: int = 0) -> str:
    """The ``index``-th ``language`` code block under ``heading``, up to the next heading."""
    section = re.split(r"\n#{2,3} ", markdown.split(heading, 1)[1], maxsplit=1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)[index]


DEVELOPMENT = (REPO / "docs" / "development.md").read_text()


def test_the_documented_recipe_is_the_shipped_fedprox() -> None:
    """docs/development.md's worked example is strategies/fedprox.py and its yaml, verbatim,
    so the recipe cannot drift from code that the tests run (tests/test_fedprox.py)."""
    heading = "### Worked example: FedProx"
    assert (
        _block(DEVELOPMENT, heading, "python") == (REPO / "strategies" / "fedprox.py").read_text()
    )
    yaml = (REPO / "conf" / "strategy" / "fedprox.yaml").read_text()
    assert _block(DEVELOPMENT, heading, "yaml") == yaml


def _function_source(path: Path, name: str) -> str:
    source = path.read_text()
    (function,) = [node for node in ast.parse(source).body if getattr(node, "name", None) == name]
    return ast.get_source_segment(source, function) + "\n"


def test_the_server_side_example_is_the_shipped_fedadam() -> None:
    """The second worked example is strategies/fedopt.py, its yaml and its resume test."""
    heading = "### Worked example: FedAdam"
    assert _block(DEVELOPMENT, heading, "python") == (REPO / "strategies" / "fedopt.py").read_text()
    yaml = (REPO / "conf" / "strategy" / "fedadam.yaml").read_text()
    assert _block(DEVELOPMENT, heading, "yaml") == yaml
    test = _function_source(
        REPO / "tests" / "test_fedopt.py", "test_a_resumed_run_equals_the_uninterrupted_one"
    )
    assert _block(DEVELOPMENT, heading, "python", 1) == test


def test_the_client_state_example_is_the_shipped_scaffold_client() -> None:
    """The per-client-state example is SCAFFOLD's client half, verbatim."""
    client = _function_source(REPO / "strategies" / "scaffold.py", "ScaffoldClient")
    assert _block(DEVELOPMENT, "### Per-client state", "python") == client


@pytest.mark.parametrize("module", ["fedprox.py", "fedopt.py"])
def test_the_worked_examples_import_only_the_api(module: str) -> None:
    imports, _, _ = _code_facts(REPO / "strategies" / module)
    assert {m.rsplit(".", 1)[0] for m in imports if m.startswith("strategies")} == {
        "strategies.api"
    }


def _documented_signatures(heading: str) -> dict[str, list[str]]:
    """Hook name -> parameter names, from the first column of the table under ``heading``."""
    section = re.split(r"\n#{2,3} ", DEVELOPMENT.split(heading, 1)[1], maxsplit=1)[0]
    rows = re.findall(r"^\| `(\w+)\((.*?)\) ->", section, re.M)
    return {name: re.findall(r"(\w+):", params) for name, params in rows}


SERVER_HOOKS = [
    "round_params",
    "downlink",
    "client_records",
    "begin_aggregation",
    "decode",
    "fold",
    "aggregate",
    "round_metrics",
    "progress",
    "state_dict",
    "load_state_dict",
    "finish",
]
CLIENT_HOOKS = ["receive", "prepare", "train", "optimizer", "loss_term", "before_step", "reply"]


def test_every_hook_is_documented_with_its_signature() -> None:
    """The contracts' tables name each hook with the parameters the code declares."""
    documented = _documented_signatures("### The hooks' contracts")
    hooks = [(FedSparseStrategy, SERVER_HOOKS), (strategies.api.ClientAlgorithm, CLIENT_HOOKS)]
    for base, names in hooks:
        for name in names:
            declared = list(inspect.signature(getattr(base, name)).parameters)[1:]
            assert documented[name] == declared, name
    assert set(documented) == set(SERVER_HOOKS) | set(CLIENT_HOOKS)


class UniformMean(FedSparseStrategy):
    """The simple path: no cohort sum; every client's trained arrays count once."""

    name = "test-uniform-mean"

    def decode(self, update: ClientUpdate) -> dict[str, np.ndarray]:
        record = update.records.get(ARRAYS)
        if not isinstance(record, ArrayRecord):
            raise ReplyError("names", "no arrays")
        return to_numpy_dict(record)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        return to_array_record(
            {
                name: np.mean([u.payload[name] for u in updates], axis=0).astype(values.dtype)
                for name, values in updates[0].payload.items()
            }
        )


register_algorithm(Algorithm(UniformMean.name, UniformMean))


def test_a_strategy_without_a_cohort_sum_runs_on_cohorts() -> None:
    federation = Federation(
        [
            f"strategy.name={UniformMean.name}",
            "dataset=digits",
            "num_clients=6",
            "clients_per_round=4",
            "engine.clients_per_node=2",
        ]
    )
    assert not federation.server.job.reduce_cohorts  # nothing to reduce with: every reply travels
    replies = federation.send(1)
    trained = [
        to_numpy_dict(records[ARRAYS])
        for reply in replies
        for _, records in sorted(unpack_clients(reply.content).items())
    ]
    result = federation.aggregate(1, replies)
    assert result.stats.clients == 4 and len(trained) == 4
    for name, values in to_numpy_dict(result.arrays).items():
        expected = np.mean([t[name] for t in trained], axis=0).astype(values.dtype)
        assert values.tobytes() == expected.tobytes(), name
