"""Federated algorithms: each module or package here holds a server strategy, its client half
and its codec, and registers itself on import. ``strategies.core`` is the framework they run on,
``strategies.numeric`` the array arithmetic they share, ``strategies.api`` an author's one
import.

Importing this package imports every module beside it, so a new algorithm file in this folder
is registered without any other change.
"""

import importlib
import pkgutil

from strategies.core.registry import (
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
