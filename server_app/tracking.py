"""Experiment tracking: every round's metrics also go to TensorBoard and/or MLflow.

``tracking=tensorboard``, ``tracking=mlflow`` or ``tracking=[tensorboard,mlflow]`` (optional
extras: ``pip install -e '.[tensorboard]'``, ``'.[mlflow]'``). Each backend gets, per round, every
numeric scalar of the metrics.jsonl row as a series with the round as step, and each per-layer
monitor dict (``layer_rel_update``: {layer: value}) as one series per layer
(``layer_rel_update/conv1.weight``); at the start, the composed config as hyperparameters; at the
end, summary.json, config.yaml and the plots.

Where they write: ``tracking_dir``, else the sweep folder of a ``--multirun`` (so a sweep's runs
sit side by side and the backends' comparison views compare them), else the run folder:
``<dir>/tensorboard/<run name>/`` (TensorBoard: one logdir, one sub-folder per run; the plots
as images, summary.json and config.yaml as text) and ``<dir>/mlflow.db`` with artifacts in
``<dir>/mlartifacts/`` (MLflow: a sweep is one experiment named after its folder, a single run
lands in experiment ``fedsparse``). MLflow's plain-file store refuses to start in MLflow 3 unless
opted into, so the store is one local SQLite file (SQLAlchemy and Alembic come with flwr).

Tracking never fails a run: a backend that raises is reported once and left out from then on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, ListConfig, OmegaConf

from server_app.results import flatten_config

log = logging.getLogger(__name__)

NONE = "none"
BACKENDS = ("tensorboard", "mlflow")
SINGLE_RUN_EXPERIMENT = "fedsparse"
RUN_DIR_TAG = "fedsparse.run_dir"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_BATCH = 100  # params per log_batch call (MLflow's limit)


def backend_names(value: Any) -> list[str]:
    """The backends a ``tracking`` value asks for, in order and once each (none: [])."""
    items = [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(item for item in items if item != NONE))


def is_valid(value: Any) -> bool:
    """Whether ``value`` is ``none``, one backend name or a list of them."""
    if not isinstance(value, str | list | ListConfig):
        return False
    items = [value] if isinstance(value, str) else list(value)
    return all(item in (NONE, *BACKENDS) for item in items)


def missing_extra(backend: str) -> str | None:
    """What to run to install ``backend``'s extra (it adds the module of that name), None when
    it is installed."""
    if importlib.util.find_spec(backend) is not None:
        return None
    return f"pip install -e '.[{backend}]'"


def tracking_root(cfg: DictConfig, run_dir: Path, sweep: Path | None) -> Path:
    """The folder the backends write into (see the module docstring)."""
    if cfg.get("tracking_dir"):
        return Path(cfg.tracking_dir).expanduser()
    return sweep if sweep is not None else run_dir


def flat_config(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The resolved config as ``{"strategy.name": "fedavg", ...}``; None and lists as text."""
    flat = flatten_config(OmegaConf.to_container(cfg, resolve=True))
    return {
        key: value if isinstance(value, str | int | float | bool) else json.dumps(value)
        for key, value in flat.items()
    }


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def round_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The series values of one metrics row: its finite numbers (not the round, which is the
    step; not None, NaN or flags), per-layer dicts as ``<key>/<layer>``."""
    values = {}
    for key, value in row.items():
        if key == "round":
            continue
        if isinstance(value, Mapping):
            values.update({f"{key}/{k}": float(v) for k, v in value.items() if _is_scalar(v)})
        elif _is_scalar(value):
            values[key] = float(value)
    return values


class Backend(Protocol):
    """One tracking backend."""

    name: str

    def log_round(self, step: int, values: Mapping[str, float]) -> None: ...

    def finish(self, step: int, artifacts: Mapping[str, Path]) -> None: ...


class TensorBoard:
    """torch's ``SummaryWriter`` into ``<root>/tensorboard/<run name>``; the hyperparameters go
    to the HParams view in the same run (``add_hparams`` would open a second one)."""

    name = "tensorboard"

    def __init__(self, logdir: Path, params: Mapping[str, Any], first_round: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # a resumed run drops what an earlier leg logged from its first round on
        self.writer = SummaryWriter(
            str(logdir), purge_step=first_round if first_round > 1 else None
        )
        for summary in hparams(dict(params), {"accuracy": 0.0, "loss": 0.0}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log_round(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a stopped run keeps every finished round

    def finish(self, step: int, artifacts: Mapping[str, Path]) -> None:
        """PNGs as images (tag without the suffix), text files as text in a code block."""
        from matplotlib.image import imread

        for name, path in artifacts.items():
            if path.suffix == ".png":
                image = imread(path)
                self.writer.add_image(name.removesuffix(".png"), image, step, dataformats="HWC")
            else:
                text = "\n".join("    " + line for line in path.read_text().splitlines())
                self.writer.add_text(name, text, step)
        self.writer.close()


class Mlflow:
    """One MLflow run (named after the run folder) in a local SQLite store; a resumed run
    continues the run that carries its folder in the ``fedsparse.run_dir`` tag."""

    name = "mlflow"

    def __init__(
        self, root: Path, experiment: str, run_dir: Path, params: Mapping[str, Any]
    ) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for noisy in ("alembic", "mlflow.store.db.utils"):  # the store's table set-up
            logging.getLogger(noisy).setLevel(logging.WARNING)
        root.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # the store maps its tables with a deprecated loader
            warnings.filterwarnings("ignore", message=".*noload.*")
            self.client = MlflowClient(tracking_uri=f"sqlite:///{(root / MLFLOW_DB).resolve()}")
            found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(
                experiment, artifact_location=(root / MLFLOW_ARTIFACTS).resolve().as_uri()
            )
        )
        tag = str(run_dir.resolve())
        earlier = [
            r
            for r in self.client.search_runs([experiment_id])
            if r.data.tags.get(RUN_DIR_TAG) == tag
        ]
        if earlier:
            run = earlier[0]
            self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_dir.name, tags={RUN_DIR_TAG: tag}
            )
        self.run_id = run.info.run_id
        logged = run.data.params  # params cannot change: a resumed run keeps its first values
        new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MLFLOW_BATCH])

    def log_round(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, step: int, artifacts: Mapping[str, Path]) -> None:
        for name, path in artifacts.items():
            folder = str(Path(name).parent)
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        self.client.set_terminated(self.run_id)


class Tracker:
    """The run's backends; one that raises is reported once and dropped for the rest of the run."""

    def __init__(self, run_dir: Path, backends: list[Backend]) -> None:
        self.run_dir = run_dir
        self.backends = backends
        self.step = 0

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Log one metrics.jsonl row at step ``row["round"]``."""
        self.step = int(row["round"])
        values = round_scalars(row)
        self._each(lambda backend: backend.log_round(self.step, values))

    def finish(self, artifacts: Iterable[Path]) -> None:
        """Attach the run's result files (paths inside the run folder) and close the backends."""
        files = {str(p.relative_to(self.run_dir)): p for p in artifacts if p.exists()}
        self._each(lambda backend: backend.finish(self.step, files))

    def _each(self, call: Callable[[Backend], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as err:  # tracking must never fail the run
                _report(backend.name, err)
                self.backends.remove(backend)


def _report(name: str, err: Exception) -> None:
    log.warning(
        "tracking=%s failed (%s: %s); it is off for the rest of this run, the run goes on",
        name,
        type(err).__name__,
        err,
    )


def start(cfg: DictConfig, run_dir: Path, sweep: Path | None, first_round: int = 1) -> Tracker:
    """The backends ``cfg.tracking`` names, started for ``run_dir`` (part of ``sweep`` when it is
    a ``--multirun`` job); a backend that cannot start is reported and left out."""
    names = backend_names(cfg.get("tracking", NONE))
    backends: list[Backend] = []
    if not names:
        return Tracker(run_dir, backends)
    root, params = tracking_root(cfg, run_dir, sweep), flat_config(cfg)
    makers: dict[str, Callable[[], Backend]] = {
        "tensorboard": lambda: TensorBoard(
            root / "tensorboard" / run_dir.name, params, first_round
        ),
        "mlflow": lambda: Mlflow(
            root, str(sweep) if sweep is not None else SINGLE_RUN_EXPERIMENT, run_dir, params
        ),
    }
    for name in names:
        try:
            backends.append(makers[name]())
        except Exception as err:  # tracking must never fail the run
            _report(name, err)
    return Tracker(run_dir, backends)
