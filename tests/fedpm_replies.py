"""A FakeGrid handler that answers FedPM train messages with coded masks (tests' shared fake)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from client_app.faults import corrupt_stream
from strategies.core.job import ClientJob
from strategies.core.strategy import ARRAYS
from strategies.core.wire import pack_clients
from strategies.fedpm.client import received_theta
from strategies.fedpm.mask_codec import CodedMasks
from strategies.fedpm.shared import CODE, STREAM, seed_theta

# (job, client id, the θ it received as uint16, the client's generator) -> its coded masks
Encoder = Callable[[ClientJob, int, dict[str, np.ndarray], np.random.Generator], CodedMasks]


def coded_replies(
    encode: Encoder, corrupt: dict[int, str], absent: frozenset[int] = frozenset()
) -> Callable[[Message], Message]:
    """A handler replying for every client with the masks ``encode`` codes against the
    downlink θ, client c's reply damaged as ``corrupt[c]`` names, the clients in ``absent``
    left out."""

    def handler(msg: Message) -> Message:
        job = ClientJob.from_record(msg.content["config"])
        priors, _ = received_theta(msg.content[ARRAYS], initial=functools.partial(seed_theta, job))
        per_client = {}
        for c in job.client_ids:
            if c in absent:
                continue
            coded = encode(job, c, priors, np.random.default_rng(c))
            records = {
                ARRAYS: ArrayRecord({STREAM: Array(coded.stream)}),
                CODE: coded.header(),
                "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5}),
            }
            if c in corrupt:
                corrupt_stream(records, corrupt[c])
            per_client[c] = records
        return Message(pack_clients(per_client), reply_to=msg)

    return handler
