"""BatchNorm policy: ``global`` (BN averaged like every weight) or ``local`` (FedBN-style).

Under ``local`` each client keeps its own BN affine parameters and running statistics across
rounds: they are saved in the client's state after training and put back over the received
global values before the next round. The server still averages them for its own evaluation.
"""

from __future__ import annotations

from flwr.app import ArrayRecord
from torch import nn

from strategies.core.wire import ClientState

BN_POLICIES = ("global", "local")
LOCAL_BN = "local-batchnorm"


def batchnorm_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer (parameters and buffers)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            keys.extend(prefix + key for key in module.state_dict())
    return keys


def restore_local_batchnorm(model: nn.Module, state: ClientState) -> None:
    """Put this client's own BN values back (no-op before its first round)."""
    stored = state.get(LOCAL_BN)
    if isinstance(stored, ArrayRecord):
        model.load_state_dict(stored.to_torch_state_dict(), strict=False)


def keep_local_batchnorm(model: nn.Module, state: ClientState) -> None:
    """Remember this client's BN values for its next round."""
    keys = batchnorm_keys(model)
    if keys:
        full = model.state_dict()
        state.set(LOCAL_BN, ArrayRecord({k: full[k].detach().clone() for k in keys}))
