"""Federated algorithms: each module or package here holds a server strategy, its client half
and its codec, and registers itself on import; ``strategies.protocol`` holds what they share.

Importing this package imports every module beside it, so a new algorithm file in this folder
is registered without any other change.
"""

import importlib
import pkgutil

from strategies.protocol.registry import (
    Algorithm,
    available_algorithms,
    build_job_model,
    get_algorithm,
    register_algorithm,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Algorithm",
    "available_algorithms",
    "build_job_model",
    "get_algorithm",
    "register_algorithm",
]
