"""The generic ClientApp: it trains whichever clients a message names, with whichever algorithm.

Nothing here names a specific algorithm: the message's job says which client half to call.
A message may address a cohort of clients hosted by this node; the reply carries one set of
records per client under ``"<client_id>/<name>"`` keys.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import ClassVar

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

import strategies
from client_app.allocator import keep_freed_memory
from client_app.batchnorm import keep_local_batchnorm, restore_local_batchnorm
from client_app.census import CENSUS, node_census
from client_app.faults import InjectedFault, corrupt_reply, plan_faults
from client_app.state_files import client_states, lost_version
from data.datasets import ArrayDataset, DataNotFoundError
from data.device import device_data
from data.federated import DataSpec, client_data
from models.training import TensorData, evaluate, resolve_device, round_seed, seed_torch
from strategies.core.client import ClientAlgorithm, ClientContext
from strategies.core.cohort import QUERY_CONFIG, hosted_clients
from strategies.core.job import ClientJob, DataInfo
from strategies.core.reduction import CohortReducer
from strategies.core.tensor_arrays import ReplyRecord, wire_records
from strategies.core.update import ARRAYS, CONFIG, METRICS, STATE_LOST
from strategies.core.wire import CLIENT_IDS_KEY, ClientState, Record, pack_clients, unpack_clients

DATA_ROOT = "data-root"
PIP_NAMES = {"sklearn": "scikit-learn"}  # import names pip installs under another name
TEMPLATES_KEPT = 4
TEMPLATE_SEED = 0
CPU = torch.device("cpu")


def _drop_actor_termination_notice(record: logging.LogRecord) -> bool:
    """Each of Flower's Ray actors logs "Manually terminating ClientAppActor" as a WARNING when
    the simulation ends: the normal end, not something to warn about (actors import this
    module, so the filter is installed in them)."""
    return "Manually terminating" not in record.getMessage()


logging.getLogger("flwr").addFilter(_drop_actor_termination_notice)
app = ClientApp()
keep_freed_memory()  # once per process hosting clients: each allocates and frees model-sized arrays


@lru_cache(maxsize=4096)
def _client_tensors(
    spec: DataSpec, info: DataInfo, client_id: int, device: str, data_root: str = ""
) -> tuple[TensorData, TensorData]:
    """A client's (train, test) tensors, loaded once per process.

    ``data_root`` (the node config's ``data-root``) replaces the shipped partition with the
    device's own data; it must match ``info`` (the job's description of the configured data
    set: shape and classes) and is normalised with its statistics.
    """
    if data_root:
        train, test = device_data(data_root, info, spec.local_test_fraction, spec.seed, client_id)
    else:
        train, test = _shipped_partition(spec, client_id)
    return (
        TensorData.from_arrays(train, info.mean, info.std, torch.device(device)),
        TensorData.from_arrays(test, info.mean, info.std, torch.device(device)),
    )


class ShippedDataError(RuntimeError):
    """This node cannot load its partition of the configured data set; says what it lacks."""


def _shipped_partition(spec: DataSpec, client_id: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Client ``client_id``'s partition of the configured data set, or one line naming what
    this node lacks for it: a package (a client-only install) or the data set's files."""
    own_data = (
        "or train on the node's own data: --node-config 'partition-id=<id> "
        f'{DATA_ROOT}="/path/to/images"\' (docs/deployment.md, Device data)'
    )
    try:
        return client_data(spec, client_id)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]  # sklearn.datasets: the package is sklearn
        package = PIP_NAMES.get(top, top)
        raise ShippedDataError(
            f"this node cannot load client {client_id}'s partition of dataset={spec.dataset}: "
            f"its Python lacks the package {package!r} ({err}); install the server side here "
            f"(pip install -e '.[server]'), {own_data}"
        ) from err
    except DataNotFoundError as err:
        raise ShippedDataError(
            f"this node cannot load client {client_id}'s partition of dataset={spec.dataset}: "
            f"{err}; {own_data}"
        ) from err


def _data_root(context: Context) -> str:
    """The node's own data folder or .npz (empty: use the shipped partition)."""
    value = context.node_config.get(DATA_ROOT, "")
    if not isinstance(value, str):
        raise ValueError(
            f"node config {DATA_ROOT}={value!r} must be a quoted path, e.g. "
            "--node-config 'data-root=\"/srv/fedsparse/data\" partition-id=0 num-partitions=2'"
        )
    return value


class _ModelTemplates:
    """Each job's model built once per process; every client trains one reused working copy.

    Building initialises every weight from random draws (and FedPM's frozen weights from a seed),
    and a ``deepcopy`` per client costs more than its local training's optimizer steps. So each
    job keeps a pristine template and one working model: :meth:`fresh` resets the working
    model's tensors (parameters and buffers, persistent or not), gradients, ``requires_grad``
    flags and train/eval modes to the template's, and the received payload overwrites the rest.
    """

    built: ClassVar[OrderedDict[str, tuple[nn.Module, nn.Module]]] = OrderedDict()

    @classmethod
    def fresh(cls, job: ClientJob, device: torch.device) -> nn.Module:
        key = repr((job.algorithm, job.model, job.dataset, device, sorted(job.params.items())))
        if key not in cls.built:
            info = job.data_info()
            with torch.random.fork_rng(devices=[]):  # a build never moves the caller's RNG
                torch.random.default_generator.manual_seed(TEMPLATE_SEED)
                template = strategies.build_job_model(job, info.input_shape, info.num_classes)
            template = template.to(device)
            cls.built[key] = (template, copy.deepcopy(template))
            if len(cls.built) > TEMPLATES_KEPT:
                cls.built.popitem(last=False)
        template, working = cls.built[key]
        reset_to(working, template)
        return working


def reset_to(model: nn.Module, template: nn.Module) -> None:
    """Make ``model`` (a deep copy of ``template``) equal to ``template`` again, in place."""
    with torch.no_grad():
        for (_, target), (_, source) in zip(
            model.named_parameters(), template.named_parameters(), strict=True
        ):
            target.copy_(source)
            target.grad = None
            target.requires_grad_(source.requires_grad)
        for (_, target), (_, source) in zip(
            model.named_buffers(), template.named_buffers(), strict=True
        ):
            target.copy_(source)
    for target, source in zip(model.modules(), template.modules(), strict=True):
        target.training = source.training


def _prepare(msg: Message, context: Context) -> tuple[ClientJob, torch.device]:
    job = ClientJob.from_record(msg.content[CONFIG])
    hosted = hosted_clients(context.node_config, job.num_clients, job.clients_per_node)
    if set(job.client_ids) - set(hosted):
        raise ValueError(f"clients {list(job.client_ids)} are not all hosted by this node {hosted}")
    torch.set_num_threads(max(job.threads, 1))
    return job, resolve_device(job.device)


def client_contexts(
    content: RecordDict,
    job: ClientJob,
    states: Mapping[int, ClientState | None],
    device: torch.device = CPU,
) -> dict[int, ClientContext]:
    """What the algorithm's client half is told about each client of a message: the typed
    parameters and the message's per-client records are read once for the whole cohort."""
    params = strategies.get_algorithm(job.algorithm).params.from_job(job)
    own = unpack_clients(content)
    return {
        c: ClientContext(
            c,
            job,
            params,
            state,
            device,
            round_seed(job.seed, job.server_round, c),
            content,
            own.get(c, {}),
        )
        for c, state in states.items()
    }


def client_context(
    content: RecordDict,
    job: ClientJob,
    client_id: int,
    state: ClientState | None,
    device: torch.device = CPU,
) -> ClientContext:
    """:func:`client_contexts` for one client."""
    return client_contexts(content, job, {client_id: state}, device)[client_id]


def _receive(algorithm: ClientAlgorithm, ctx: ClientContext) -> nn.Module:
    """The client's starting model: the received payload, then its own BN under bn_policy=local."""
    model = _ModelTemplates.fresh(ctx.job, ctx.device)
    algorithm.receive(ctx, model)
    if ctx.job.bn_policy == "local":
        restore_local_batchnorm(model, ctx.state)
    return model


def _train_one(
    msg: Message, context: Context, ctx: ClientContext
) -> tuple[dict[str, ReplyRecord], float]:
    """One client's reply, and the seconds its encoding (the algorithm's ``reply``) took."""
    job, client_id = ctx.job, ctx.client_id
    algorithm = strategies.get_algorithm(job.algorithm).client()
    faults = plan_faults(job, client_id)
    if faults.error:
        raise InjectedFault(f"injected failure of client {client_id} (faults.error_rate)")
    if faults.slow_s:
        time.sleep(faults.slow_s)
    seed_torch(ctx.seed, ctx.device)
    model = _receive(algorithm, ctx)
    train, _ = _client_tensors(
        job.data_spec(), job.data_info(), client_id, str(ctx.device), _data_root(context)
    )
    started = time.perf_counter()
    algorithm.prepare(ctx, model, train)
    trained = algorithm.train(ctx, model, train)
    if job.bn_policy == "local":
        keep_local_batchnorm(model, ctx.state)
    trained_at = time.perf_counter()
    records = algorithm.reply(ctx, model, trained)
    metrics = MetricRecord(
        {"num-examples": len(train), "train-loss": trained.loss, "train-s": trained_at - started}
    )
    lost = lost_version(ctx.state)
    if lost is not None:  # the server names it in one line
        metrics[STATE_LOST] = lost
    extra = records.pop(METRICS, None)
    if isinstance(extra, MetricRecord):
        metrics.update(extra)
    records[METRICS] = metrics
    if faults.corrupt:
        records = wire_records(records)
        corrupt_reply(records, faults.corrupt)
    return records, time.perf_counter() - trained_at


@app.query()
def directory(msg: Message, context: Context) -> Message:
    """Tell the server which clients this node hosts, or, asked for ``num-clients=0`` (a
    deployed run still sizing itself), the node's own partition id and declared size."""
    query = msg.content[QUERY_CONFIG]
    if int(query["num-clients"]) == CENSUS:
        return Message(RecordDict({QUERY_CONFIG: node_census(context.node_config)}), reply_to=msg)
    client_ids = hosted_clients(
        context.node_config, int(query["num-clients"]), int(query["clients-per-node"])
    )
    return Message(
        RecordDict({QUERY_CONFIG: ConfigRecord({CLIENT_IDS_KEY: client_ids})}), reply_to=msg
    )


def _reducer(job: ClientJob, msg: Message) -> CohortReducer | None:
    """The cohort's running sum when the job asks this node to reduce (None: reply per client)."""
    kind = strategies.get_algorithm(job.algorithm).cohort_sum
    if not job.reduce_cohorts or kind is None:
        return None
    return CohortReducer(kind(job, msg.content[ARRAYS]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train every client the message names, one after another; their replaced state is freed
    only when all succeeded (a message that raises keeps the node's committed state intact).
    Under cohort reduction each client's reply is checked and added as soon as it is made, so
    the node holds one partial sum, not one update per client."""
    job, device = _prepare(msg, context)
    states = client_states(context.state, job, context.run_id, training=True)
    reducer = _reducer(job, msg)
    per_client: dict[int, dict[str, Record]] = {}
    contexts = client_contexts(msg.content, job, states, device)
    for client_id in job.client_ids:
        records, encode_s = _train_one(msg, context, contexts[client_id])
        if reducer is None:
            per_client[client_id] = wire_records(records)
        else:
            reducer.add(client_id, records, encode_s)
    for state in states.values():
        state.release_superseded()
    content = pack_clients(per_client) if reducer is None else reducer.content()
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on each named client's local test split."""
    job, device = _prepare(msg, context)
    algorithm = strategies.get_algorithm(job.algorithm).client()
    per_client: dict[int, dict[str, Record]] = {}
    states = client_states(context.state, job, context.run_id, training=False)
    for client_id, ctx in client_contexts(msg.content, job, states, device).items():
        model = _receive(algorithm, ctx)
        _, test = _client_tensors(
            job.data_spec(), job.data_info(), client_id, str(device), _data_root(context)
        )
        loss, accuracy = evaluate(model, test) if len(test) else (0.0, 0.0)
        per_client[client_id] = {
            METRICS: MetricRecord({"num-examples": len(test), "loss": loss, "accuracy": accuracy})
        }
    return Message(pack_clients(per_client), reply_to=msg)
