"""Tests for server_app.settings: composing conf/, validation, the client job and the strategy."""

from __future__ import annotations

import copy
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

import models
import strategies
from data.datasets import DATASETS
from server_app.overrides import check_command_line
from server_app.settings import (
    ConfigError,
    build_strategy,
    check_data,
    client_job,
    compose_config,
    strategy_params,
    validate,
)
from strategies.core.cohort import ClientDirectory
from strategies.fedavg import FedAvg


def test_default_config_validates(base_cfg: DictConfig) -> None:
    cfg = base_cfg
    validate(cfg)
    assert cfg.strategy.name == "fedavg"
    assert cfg.dataset.name == "mnist5k"
    assert cfg.partition.name == "dirichlet"
    assert (cfg.num_clients, cfg.clients_per_round, cfg.min_replies) == (20, 20, 1)


def test_overrides_as_one_shell_string() -> None:
    cfg = compose_config("dataset=digits 'lr=0.5' partition=iid num_clients=4 clients_per_round=2")
    validate(cfg)
    assert (cfg.dataset.name, cfg.lr, cfg.partition.name) == ("digits", 0.5, "iid")
    assert cfg == compose_config(
        ["dataset=digits", "lr=0.5", "partition=iid", "num_clients=4", "clients_per_round=2"]
    )


@pytest.fixture(scope="module")
def base_cfg() -> DictConfig:
    """The default config, composed once (composing costs ~0.2 s); tests change copies."""
    return compose_config([])


@pytest.fixture(scope="module")
def pathological_cfg() -> DictConfig:
    return compose_config(["partition=pathological"])


def _changed(cfg: DictConfig, **values: Any) -> DictConfig:
    """A copy of ``cfg`` with dotted keys (``__`` stands for ``.``) set, like CLI overrides."""
    changed = copy.deepcopy(cfg)
    with open_dict(changed):
        for key, value in values.items():
            OmegaConf.update(changed, key.replace("__", "."), value, merge=True)
    return changed


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["num_rounds=-1"], "num_rounds"),
        (["clients_per_round=30", "num_clients=20"], "clients_per_round"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha"),
        (["clients_per_round=5", "min_replies=6"], "min_replies"),
        (["local_steps=0"], "local_steps"),
        (["local_steps=abc"], "local_steps"),
        (["batch_size=half"], "batch_size"),
    ],
)
def test_invalid_override_names_the_key(overrides: list[str], key: str) -> None:
    """End to end through Hydra's override parser."""
    with pytest.raises(ConfigError, match=r"invalid config: ") as info:
        validate(compose_config(overrides))
    assert f"{key}=" in str(info.value)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"num_rounds": -1}, "num_rounds"),
        ({"num_rounds": 1.5}, "num_rounds"),
        ({"num_rounds": True}, "num_rounds"),
        ({"num_clients": 0}, "num_clients"),
        ({"clients_per_round": 30, "num_clients": 20}, "clients_per_round"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"partition__alpha": 0}, "partition.alpha"),
        ({"partition__alpha": -1}, "partition.alpha"),
        ({"partition__alpha": 0.0}, "partition.alpha"),
        ({"partition__min_size": 0}, "partition.min_size"),
        ({"local_steps": 0}, "local_steps"),
        ({"local_steps": "abc"}, "local_steps"),
        ({"local_steps": 1.5}, "local_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "half"}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": "abc"}, "lr"),
        ({"momentum": 1}, "momentum"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"engine__client_cpus": 0}, "engine.client_cpus"),
        ({"engine__client_gpus": 2}, "engine.client_gpus"),
        ({"engine__client_gpus": -0.5}, "engine.client_gpus"),
        ({"engine__clients_per_node": 0}, "engine.clients_per_node"),
        ({"engine__clients_per_node": "many"}, "engine.clients_per_node"),
        ({"engine__ray_address": ""}, "engine.ray_address"),
        ({"clients_per_round": 5, "min_replies": 6}, "min_replies"),
        ({"min_replies": 0}, "min_replies"),
        ({"local_test_fraction": 1.0}, "local_test_fraction"),
        ({"round_timeout_s": 0}, "round_timeout_s"),
        ({"resume": "yes"}, "resume"),
        ({"federated_eval": "off"}, "federated_eval"),
        ({"central_eval_overlap": "on"}, "central_eval_overlap"),
        ({"plots": "no"}, "plots"),
        ({"dataset__download": "yes"}, "dataset.download"),
        ({"model__name": "nope"}, "model.name"),
        ({"dataset__name": "nope"}, "dataset.name"),
        ({"strategy__name": "nope"}, "strategy.name"),
    ],
)
def test_invalid_value_names_the_key(base_cfg: DictConfig, values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid config: ") as info:
        validate(_changed(base_cfg, **values))
    assert f"{key}=" in str(info.value)


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", "true"])
def test_a_bad_eval_every_is_one_line_naming_the_value(value: str) -> None:
    """As typed on the command line (Hydra turns ``x`` into a string, ``true`` into a bool)."""
    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"eval_every={value}"]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid config: eval_every=")
    assert value in message.split(":")[1] or value.capitalize() in message.split(":")[1]
    assert "must be an integer >= 1" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("local_steps=0", "local_steps=0: must be null (train local_epochs epochs) or an integer"),
        ("batch_size=half", "batch_size='half': must be an integer >= 1 or full (one batch of"),
    ],
)
def test_local_regime_errors_are_one_line_with_the_choices(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config([override]))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"invalid config: {expected}")


def test_fedsgd_regime_reaches_the_client_job() -> None:
    """``local_steps=1 batch_size=full momentum=0`` (FedSGD) validates and travels as set."""
    cfg = compose_config(["local_steps=1", "batch_size=full", "momentum=0"])
    validate(cfg)
    job = client_job(cfg)
    assert (job.local_steps, job.batch_size, job.momentum) == (1, "full", 0.0)
    assert client_job(compose_config([])).local_steps is None


def test_local_epochs_beside_local_steps_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="server_app.settings"):
        validate(compose_config(["local_steps=4"]))
        assert not caplog.records
        validate(compose_config(["local_steps=4", "local_epochs=3"]))
    assert any("local_epochs=3 changes nothing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("compressor", ["none", "sign"])
def test_a_topk_ratio_without_topk_is_warned_about(
    caplog: pytest.LogCaptureFixture, compressor: str
) -> None:
    lbgm = ["strategy=lbgm", f"strategy.compressor={compressor}"]
    idle = f"strategy.topk_ratio=0.3 changes nothing: strategy.compressor={compressor}"
    with caplog.at_level(logging.WARNING, logger="server_app.settings"):
        validate(compose_config(lbgm))  # the default ratio: nothing was set
        validate(
            compose_config(["strategy=lbgm", "strategy.compressor=topk", "strategy.topk_ratio=0.3"])
        )
        validate(compose_config(["strategy=topk", "strategy.topk_ratio=0.3"]))
        assert not [r for r in caplog.records if "changes nothing" in r.getMessage()]
        validate(compose_config([*lbgm, "strategy.topk_ratio=0.3"]))
    assert [r.getMessage() for r in caplog.records if idle in r.getMessage()]


def test_supermask_twins_are_not_model_choices(base_cfg: DictConfig) -> None:
    """``masked_cnn`` & co. are what strategy=fedpm trains for model=cnn & co.: the model error
    neither accepts nor lists them."""
    with pytest.raises(ConfigError, match=r"model\.name='masked_cnn'") as info:
        validate(_changed(base_cfg, model__name="masked_cnn"))
    choices = str(info.value).split("choose one of: ")[1].split(", ")
    assert choices == models.configurable_models() and "cnn" in choices
    assert not any(name.startswith("masked_") for name in choices)


def test_classes_per_client_checked_for_pathological(pathological_cfg: DictConfig) -> None:
    validate(pathological_cfg)
    with pytest.raises(ConfigError, match=r"partition\.classes_per_client=0"):
        validate(_changed(pathological_cfg, partition__classes_per_client=0))


def test_invalid_device_lists_choices(base_cfg: DictConfig) -> None:
    with pytest.raises(ConfigError) as info:
        validate(_changed(base_cfg, device="tpu"))
    assert "'tpu'" in str(info.value)
    assert all(choice in str(info.value) for choice in ("auto", "cpu", "cuda"))


def test_alpha_belongs_to_dirichlet_only(pathological_cfg: DictConfig) -> None:
    with pytest.raises(ConfigError, match=r"key partition\.alpha of partition=pathological"):
        validate(_changed(pathological_cfg, partition__alpha=0.5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_fraction_without_gpu(base_cfg: DictConfig) -> None:
    with pytest.raises(ConfigError, match=r"engine\.client_gpus") as info:
        validate(_changed(base_cfg, engine__client_gpus=0.5))
    assert "engine.client_gpus=0" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu(base_cfg: DictConfig) -> None:
    with pytest.raises(ConfigError, match="device='cuda'"):
        validate(_changed(base_cfg, device="cuda"))


def test_unknown_strategy_parameter() -> None:
    cfg = compose_config(["+strategy.bogus=1"])
    with pytest.raises(ConfigError, match="bogus") as info:
        validate(cfg)
    assert "strategy=fedavg" in str(info.value)


@pytest.mark.parametrize(
    ("override", "options"),
    [("strategy=nope", ["fedavg"]), ("dataset=nope", ["mnist5k", "digits", "cifar10"])],
)
def test_unknown_group_option_lists_available(override: str, options: list[str]) -> None:
    with pytest.raises(HydraException) as info:
        compose_config([override])
    message = str(info.value)
    assert "nope" in message and "Available options" in message
    assert all(option in message for option in options)


def test_client_job_carries_config_values() -> None:
    cfg = compose_config(
        [
            "dataset=digits",
            "partition=pathological",
            "partition.classes_per_client=3",
            "num_clients=8",
            "clients_per_round=4",
            "seed=11",
            "lr=0.2",
            "momentum=0.5",
            "weight_decay=0.001",
            "batch_size=8",
            "local_epochs=3",
            "local_test_fraction=0.25",
            "device=cpu",
            "engine.client_cpus=2",
            "engine.clients_per_node=4",
            "dataset.root=/tmp/data",
            "+strategy.beta=0.5",
            "+strategy.skip=null",
        ]
    )
    job = client_job(cfg)
    assert job.algorithm == "fedavg" and job.model == "cnn" and job.dataset == "digits"
    assert job.partition == "pathological" and job.classes_per_client == 3
    assert (job.num_clients, job.seed) == (8, 11)
    assert (job.lr, job.momentum, job.weight_decay) == (0.2, 0.5, 0.001)
    assert (job.batch_size, job.local_epochs, job.local_test_fraction) == (8, 3, 0.25)
    assert (job.device, job.threads, job.clients_per_node) == ("cpu", 2, 4)
    assert job.dataset_root == "/tmp/data" and job.download is False
    assert (job.alpha, job.min_size) == (0.5, 10)  # defaults: not a dirichlet partition
    assert job.params == {"beta": 0.5}  # None-valued parameters are not sent
    assert (job.server_round, job.client_ids) == (0, ())
    assert strategy_params(cfg) == {"beta": 0.5, "skip": None}


def test_client_job_default_root_is_empty_and_dirichlet_values(base_cfg: DictConfig) -> None:
    cfg = _changed(base_cfg, partition__alpha=0.1, partition__min_size=3)
    job = client_job(cfg)
    assert job.dataset_root == "" and job.data_spec().root is None
    assert (job.alpha, job.min_size) == (0.1, 3)
    assert isinstance(job.alpha, float) and isinstance(job.lr, float)
    assert job.params == {}


def test_build_strategy(base_cfg: DictConfig) -> None:
    cfg = _changed(base_cfg, num_clients=6, clients_per_round=4, min_replies=2)
    directory = ClientDirectory(6, 1)
    strategy = build_strategy(cfg, directory)
    assert isinstance(strategy, FedAvg)
    assert (strategy.clients_per_round, strategy.min_replies) == (4, 2)
    assert strategy.directory is directory
    assert strategy.job == client_job(cfg)


def _built_in(algorithm: str) -> bool:
    """Not one a test registered for itself."""
    parts = strategies.get_algorithm(algorithm)
    return all(c.__module__.startswith("strategies.") for c in (parts.server, parts.client))


def _group_cases() -> list[tuple[str, str]]:
    return (
        [("model", name) for name in models.configurable_models()]
        + [("dataset", name) for name in DATASETS]
        + [("strategy", name) for name in strategies.available_algorithms() if _built_in(name)]
    )


@pytest.mark.parametrize(("group", "name"), _group_cases())
def test_every_registered_choice_is_a_config_option(group: str, name: str) -> None:
    """What the registries offer (and the README lists) is selectable as ``group=name``."""
    cfg = compose_config([f"{group}={name}"])
    assert cfg[group].name == name


@pytest.mark.parametrize("strategy", ["fedavg", "fedpm"])
def test_model_too_deep_for_the_images_is_a_config_error(strategy: str) -> None:
    cfg = compose_config([f"strategy={strategy}", "model=conv10", "dataset=digits"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "model=conv10" in message and "dataset=digits" in message and "1×8×8" in message
    choices = message.split("choose a model that can (")[1].split(")")[0].split(", ")
    assert "conv10" not in choices and {"cnn", "conv4"} <= set(choices)
    validate(compose_config([f"strategy={strategy}", "model=conv10", "dataset=cifar10_synthetic"]))


_ROOT = Path(__file__).parents[1]


def _documented_commands(*pages: Path) -> list[str]:
    """Every single-run ``fedsparse`` line of the ```bash blocks of ``pages`` (default: README.md
    and docs/*.md).

    Continued lines (``\\``) are joined and trailing ``# comments`` dropped. Skipped: runs with
    flags (``--multirun``, ``--cfg``), ``<placeholders>``, and lines chaining more commands.
    """
    pages = pages or (_ROOT / "README.md", *sorted((_ROOT / "docs").glob("*.md")))
    commands = []
    for page in pages:
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*", "", line).strip()
                words = line.split()
                if (
                    line.startswith("fedsparse ")
                    and not any(word.startswith("-") for word in words)
                    and "<" not in line
                    and not re.search(r"[|;&]", line)
                ):
                    commands.append(" ".join(words))
    return list(dict.fromkeys(commands))


@pytest.mark.parametrize("command", _documented_commands())
def test_documented_commands_validate(command: str, tmp_path, monkeypatch) -> None:
    """Each run the README and docs/ tell users to type is a valid config (a GPU share only
    where torch sees a GPU), and the CLI's typo check finds nothing in its overrides (a
    ``resume=true`` command is checked where the run folder it names exists)."""
    args = shlex.split(command)[1:]
    monkeypatch.chdir(tmp_path)
    if "resume=true" in args:
        run_dirs = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
        for run_dir in run_dirs:
            (tmp_path / run_dir).mkdir(parents=True)
    assert check_command_line(args) is None
    cfg = compose_config(command.removeprefix("fedsparse "))
    if cfg.engine.client_gpus > 0 and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            validate(cfg)
        return
    validate(cfg)


def test_the_documented_commands_are_found() -> None:
    """The README and docs/configuration.md both hold runs to check (an empty collection would
    make the test above pass vacuously)."""
    assert _documented_commands(_ROOT / "README.md")
    assert len(_documented_commands(_ROOT / "docs" / "configuration.md")) >= 10


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["partition=pathological", "partition.classes_per_client=11"], "classes_per_client"),
        (["partition=pathological", "num_clients=4"], "class slots"),
        (["num_clients=3000", "partition=iid"], "number of samples"),
        (["partition.min_size=500"], "min_size=500"),
    ],
)
def test_a_split_that_cannot_be_made_is_a_config_error(overrides: list[str], reason: str) -> None:
    """Checked with the data before Ray starts; before, every client failed on it in round 1."""
    cfg = compose_config(["dataset=digits", *overrides])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"partition=\w+ of dataset=digits cannot") as info:
        check_data(cfg)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=topk", "strategy.topk_ratio=abc"],
        ["strategy=lbgm", "strategy.delta=x"],
        ["strategy=lbgm", "strategy.server_lr=fast"],
        ["strategy=lips", "strategy.d0=abc"],
        ["strategy=lips", "strategy.include_shortcuts=no"],
    ],
)
def test_a_strategy_parameter_of_the_wrong_type_is_named(overrides: list[str]) -> None:
    """A string where a number or a bool belongs: the key and the requirement, not a
    comparison's TypeError."""
    key, value = overrides[1].split("=")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}='{value}': must be") as info:
        validate(compose_config(overrides))
    assert "not supported" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "unknown", "suggested"),
    [
        (["+num_round=5"], "num_round", "num_rounds"),
        (["partition=iid", "+partition.alpha=0.1"], "partition.alpha of partition=iid", None),
        (["+engine.gpus=1"], "engine.gpus", "engine.client_gpus"),
    ],
)
def test_a_key_conf_does_not_define_is_named(
    overrides: list[str], unknown: str, suggested: str | None
) -> None:
    """Hydra adds ``+key=value`` as asked; fedsparse would then ignore it without a word."""
    with pytest.raises(ConfigError, match=re.escape(f"unknown key {unknown}")) as info:
        validate(compose_config(overrides))
    if suggested:
        assert f"did you mean {suggested}" in str(info.value)


@pytest.mark.parametrize(
    ("model", "warned"), [("cnn", True), ("resnet18", False), ("resnet8", False)]
)
def test_bn_policy_local_on_a_model_without_batchnorm_is_warned_about(
    caplog: pytest.LogCaptureFixture, model: str, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="server_app.settings"):
        validate(compose_config(["bn_policy=local", f"model={model}"]))
    assert any("no BatchNorm" in r.getMessage() for r in caplog.records) == warned
