"""What an algorithm author needs for the simple path, in one import.

A strategy is a server class (``FedAvg`` or ``FedSparseStrategy`` with ``aggregate``, and
``decode`` when its replies are not FedAvg's arrays), an optional client half
(``ClientAlgorithm`` hooks, told about the client through ``ClientContext``), an optional
``Params`` dataclass, and one ``register_algorithm(Algorithm(...))`` line in a module of
``strategies/``. docs/development.md ("Adding a strategy") walks through FedProx.
"""

from models.training import TensorData, TrainResult
from strategies.core.client import ClientAlgorithm, ClientContext
from strategies.core.params import Params, check_number
from strategies.core.registry import Algorithm, parameter_shapes, register_algorithm
from strategies.core.strategy import FedSparseStrategy
from strategies.core.update import ARRAYS, ClientUpdate
from strategies.core.validation import ReplyError
from strategies.core.wire import ClientState, Record
from strategies.fedavg import FedAvg
from strategies.numeric.arrays import to_array_record, to_numpy_dict

__all__ = [
    "ARRAYS",
    "Algorithm",
    "ClientAlgorithm",
    "ClientContext",
    "ClientState",
    "ClientUpdate",
    "FedAvg",
    "FedSparseStrategy",
    "Params",
    "Record",
    "ReplyError",
    "TensorData",
    "TrainResult",
    "check_number",
    "parameter_shapes",
    "register_algorithm",
    "to_array_record",
    "to_numpy_dict",
]
