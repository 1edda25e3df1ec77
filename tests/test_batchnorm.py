"""bn_policy=local keeps each client's own BatchNorm values across rounds."""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from torch import nn

from client_app.batchnorm import batchnorm_keys, keep_local_batchnorm, restore_local_batchnorm
from strategies.core.wire import ClientState


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))


def test_batchnorm_keys_cover_parameters_and_buffers() -> None:
    assert batchnorm_keys(_model()) == [
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


def test_local_batchnorm_survives_a_new_global_model_and_stays_per_client() -> None:
    node_state = RecordDict()
    mine, other = ClientState(node_state, 0), ClientState(node_state, 1)
    trained = _model()
    with torch.no_grad():
        trained[1].weight.fill_(3.0)
        trained[1].running_mean.fill_(7.0)
        trained[0].weight.fill_(1.0)
    keep_local_batchnorm(trained, mine)

    received = _model()  # next round's global model
    global_conv = received[0].weight.clone()
    restore_local_batchnorm(received, mine)
    assert torch.all(received[1].weight == 3.0) and torch.all(received[1].running_mean == 7.0)
    assert torch.equal(received[0].weight, global_conv)  # everything else stays global

    fresh = _model()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    restore_local_batchnorm(fresh, other)  # client 1 has no BN of its own yet
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
