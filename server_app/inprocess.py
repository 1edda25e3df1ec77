"""A Grid that runs the ClientApp handlers in this process, one node after another.

No Ray, no serialisation: it is for tests and debugging of strategies, where a Ray start
(~20 s) would dominate. Node ``p`` gets ``partition-id = p`` and keeps its own ``context.state``
across rounds, as a simulated SuperNode does. A handler that raises becomes an error reply,
as in Flower.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client_app.app import directory, evaluate_global, train

HANDLERS = {
    MessageType.QUERY: directory,
    MessageType.TRAIN: train,
    MessageType.EVALUATE: evaluate_global,
}
FIRST_NODE_ID = 1000
CLIENT_APP_EXCEPTION = 1


class InProcessGrid:
    """The Grid calls fedsparse uses, served by in-process ClientApp calls."""

    def __init__(self, num_nodes: int, run_id: int = 1) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, run_id
        self.contexts = {
            FIRST_NODE_ID + p: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + p,
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for p in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def restart_node(self, partition_id: int) -> int:
        """Replace a node by a fresh one hosting the same partition, as a restarted SuperNode
        would be: a new node id and an empty ``context.state``. Returns the new node id."""
        old = next(
            n for n, c in self.contexts.items() if c.node_config["partition-id"] == partition_id
        )
        context = self.contexts.pop(old)
        new = max(self.contexts, default=FIRST_NODE_ID) + 1 + len(self.contexts)
        self.contexts[new] = Context(
            run_id=context.run_id,
            node_id=new,
            node_config=dict(context.node_config),
            state=RecordDict(),
            run_config={},
        )
        return new

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run each message's handler now; its reply waits to be pulled."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = HANDLERS[message.metadata.message_type](message, context)
            except Exception as err:  # a failing client is an error reply, not a crash
                reply = Message(Error(CLIENT_APP_EXCEPTION, repr(err)), reply_to=message)
            # a deployed SuperNode keeps the context as protobuf between messages: state that
            # cannot take that round trip must fail here too, not only on a real node
            self.contexts[message.metadata.dst_node_id] = context_from_proto(
                context_to_proto(context)
            )
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
