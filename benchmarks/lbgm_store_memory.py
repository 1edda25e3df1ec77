"""Server memory of LBGM's look-back-gradient store at 1,000 clients: memory vs disk backend.

    python benchmarks/lbgm_store_memory.py                 # 1,000 clients, cnn on mnist5k
    python benchmarks/lbgm_store_memory.py --clients 50    # quick

Each backend runs in its own fresh process (so peak RSS is its own): it fills the store with one
full LBG per layer for every client (the worst case: every client has sent every layer in full),
then reads every client's LBGs back once, as a round with all clients reusing would. Reports
peak RSS of that process, bytes held by the store and the time per client. Writes
``benchmarks/results/lbgm_store_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(backend: str, dtype: str, clients: int, directory: str) -> dict:
    """Fill and read back a ``backend`` store for ``clients`` clients; return the measurements."""
    import numpy as np

    from strategies.core.job import ClientJob
    from strategies.core.registry import parameter_shapes
    from strategies.pseudo_gradient.lbg_store import make_store

    job = ClientJob(
        algorithm="lbgm",
        model="cnn",
        dataset="mnist5k",
        partition="iid",
        num_clients=clients,
        seed=0,
    )
    sizes = {name: int(np.prod(shape)) for name, shape in parameter_shapes(job).items()}
    store = make_store(backend, sizes, dtype, directory)
    rng = np.random.default_rng(0)
    vectors = {unit: rng.standard_normal(size).astype(np.float32) for unit, size in sizes.items()}
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    for client in range(clients):
        for unit, vector in vectors.items():
            store.put(client, unit, 1, vector)
    filled = time.perf_counter()
    for client in range(clients):
        for unit in sizes:
            assert store.get(client, unit, 1) is not None
    done = time.perf_counter()
    return {
        "backend": backend,
        "dtype": dtype,
        "clients": clients,
        "params_per_client": sum(sizes.values()),
        "store_bytes": store.nbytes,
        "rss_before_mb": before_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "put_ms_per_client": 1000 * (filled - started) / clients,
        "get_ms_per_client": 1000 * (done - filled) / clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--measure", nargs=2, metavar=("BACKEND", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.clients, args.directory)))
        return
    rows = []
    for backend, dtype in (("memory", "float32"), ("disk", "float32"), ("disk", "float16")):
        with tempfile.TemporaryDirectory(prefix="lbgm-store-bench-") as directory:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--clients",
                    str(args.clients),
                    "--measure",
                    backend,
                    dtype,
                    "--directory",
                    directory,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    lines = [
        f"# LBGM server store at {args.clients} clients (cnn on mnist5k, "
        f"{rows[0]['params_per_client']:,} parameters per client)",
        "",
        "Worst case: every client holds a full LBG for every layer. One fresh process per row; "
        "'before' is after importing torch/flwr and building the model. "
        "Written by `benchmarks/lbgm_store_memory.py`.",
        "",
        "| backend | dtype | store bytes | peak RSS before filling (MB) | peak RSS after (MB) "
        "| put ms/client | get ms/client |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {r['store_bytes'] / 1e6:,.0f} MB "
            f"| {r['rss_before_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['put_ms_per_client']:.2f} "
            f"| {r['get_ms_per_client']:.2f} |"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "lbgm_store_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
