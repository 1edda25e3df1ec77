"""The client job: everything a ClientApp needs for one round, carried in the message.

Clients read no config file, so the same messages work in simulation and deployment.
The job travels as a flat ConfigRecord; algorithm parameters ride along under ``strategy.*``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from flwr.app import ConfigRecord

from data.federated import DataSpec, dataset_info

STRATEGY_PREFIX = "strategy."
FULL_BATCH = "full"  # batch_size=full: one batch is the client's whole training split
ConfigScalar = bool | int | float | str
# what a device needs to know of the configured data set, carried when the server describes it
DATA_INFO_KEYS = ("input_shape", "num_classes", "data_mean", "data_std")


@dataclass(frozen=True)
class DataInfo:
    """A data set's input shape, class count and per-channel normalisation."""

    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ClientJob:
    """What to train (or evaluate), on which data, with which hyper-parameters."""

    algorithm: str
    model: str
    dataset: str
    partition: str
    num_clients: int
    seed: int
    alpha: float = 0.5
    min_size: int = 10
    classes_per_client: int = 2
    samples_per_client: int = 100
    local_test_fraction: float = 0.2
    local_test: str = "split"
    local_test_size: int = 400
    dataset_root: str = ""
    download: bool = False
    local_epochs: int = 1
    local_steps: int | None = None  # exactly this many optimizer steps per round; None: epochs
    batch_size: int | str = 32  # an integer, or FULL_BATCH
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "auto"
    threads: int = 1
    clients_per_node: int = 1
    reduce_cohorts: bool = False  # nodes reply with one partial sum per cohort
    state_dir: str = ""
    bn_policy: str = "global"
    fault_error_rate: float = 0.0
    fault_corrupt_rate: float = 0.0
    fault_corrupt_kind: str = "non-finite"
    fault_slow_rate: float = 0.0
    fault_slow_s: float = 0.0
    server_round: int = 0
    client_ids: tuple[int, ...] = ()
    # per client of client_ids, the round of the state version it starts from and the oldest
    # version it keeps (strategies.core.client_state; empty: its clients keep no state)
    state_rounds: tuple[int, ...] = ()
    state_floors: tuple[int, ...] = ()
    # the configured data set's description (empty: the client loads the data set to learn it)
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    data_mean: tuple[float, ...] = ()
    data_std: tuple[float, ...] = ()
    params: dict[str, ConfigScalar] = field(default_factory=dict)

    def data_spec(self) -> DataSpec:
        """The data set and partition this job's clients belong to."""
        return DataSpec(
            dataset=self.dataset,
            partition=self.partition,
            num_clients=self.num_clients,
            seed=self.seed,
            alpha=self.alpha,
            min_size=self.min_size,
            classes_per_client=self.classes_per_client,
            samples_per_client=self.samples_per_client,
            local_test_fraction=self.local_test_fraction,
            local_test=self.local_test,
            local_test_size=self.local_test_size,
            root=self.dataset_root or None,
            download=self.download,
        )

    def described(self) -> ClientJob:
        """This job carrying its data set's description (loads the data set once, here)."""
        info = dataset_info(self.data_spec())
        return replace(
            self,
            input_shape=tuple(info.input_shape),
            num_classes=info.num_classes,
            data_mean=tuple(float(m) for m in info.mean),
            data_std=tuple(float(s) for s in info.std),
        )

    def data_info(self) -> DataInfo:
        """The data set's description: the one the job carries, else the loaded data set's
        (a device with its own data and a described job never loads the configured set)."""
        if self.input_shape:
            channels, height, width = (int(d) for d in self.input_shape)
            shape = (channels, height, width)
            return DataInfo(shape, self.num_classes, self.data_mean, self.data_std)
        info = dataset_info(self.data_spec())
        return DataInfo(tuple(info.input_shape), info.num_classes, info.mean, info.std)

    def batch_for(self, num_examples: int) -> int:
        """The batch size on a training split of ``num_examples``: ``full`` is all of it."""
        return max(num_examples, 1) if self.batch_size == FULL_BATCH else int(self.batch_size)

    def for_round(self, server_round: int, client_ids: list[int]) -> ClientJob:
        """The same job addressed to ``client_ids`` in ``server_round``."""
        return replace(self, server_round=server_round, client_ids=tuple(client_ids))

    def to_record(self) -> ConfigRecord:
        """Flatten into a ConfigRecord (the wire form)."""
        flat: dict[str, ConfigScalar | list[int] | list[float]] = {}
        for key, value in asdict(self).items():
            if key == "params":
                flat.update({STRATEGY_PREFIX + k: v for k, v in value.items()})
            elif key == "client_ids":
                flat[key] = list(value)
            elif key in ("state_rounds", "state_floors"):
                if value:  # Flower cannot count the bytes of an empty list
                    flat[key] = list(value)
            elif key in DATA_INFO_KEYS:
                if self.input_shape:  # an undescribed job sends none of them
                    flat[key] = list(value) if isinstance(value, tuple) else value
            elif value not in ("", None):  # Flower cannot count the bytes of an empty string
                flat[key] = value  # nor hold None; both are the defaults they stand for
        return ConfigRecord(flat)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ClientJob:
        """Rebuild a job from its wire form; unknown or missing keys raise ValueError."""
        known = {f.name for f in fields(cls)} - {"params"}
        values: dict[str, object] = {}
        params: dict[str, ConfigScalar] = {}
        for key, value in record.items():
            if key.startswith(STRATEGY_PREFIX):
                params[key[len(STRATEGY_PREFIX) :]] = value
            elif key in known:
                values[key] = tuple(value) if isinstance(value, list) else value
            else:
                raise ValueError(
                    f"client job has unknown key {key!r}; expected one of {sorted(known)}"
                )
        try:
            return cls(**values, params=params)
        except TypeError as err:
            raise ValueError(f"incomplete client job: {err}") from err
