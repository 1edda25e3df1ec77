"""``fedsparse --help``: what fedsparse is, its config groups and keys, examples, where to read on.

Built from conf/ itself (the groups' options and the defaults of the most used keys), so it
cannot drift from what the command accepts. Hydra's own help stays at ``--hydra-help``.
"""

from __future__ import annotations

from server_app.overrides import groups
from server_app.settings import compose_config

MOST_USED = (
    ("num_rounds", "rounds to run"),
    ("num_clients", "clients in the federation"),
    ("clients_per_round", "clients sampled each round (default: all)"),
    ("local_epochs", "passes over a client's data per round"),
    ("batch_size", "client batch size (or full)"),
    ("lr", "client SGD learning rate"),
    ("seed", "every random choice derives from it"),
    ("partition.alpha", "Dirichlet concentration (partition=dirichlet): lower = more skewed"),
    ("device", "auto | cpu | cuda"),
    ("resume", "continue the run in hydra.run.dir after its last finished round"),
    ("hydra.run.dir", "the run folder (metrics.jsonl, summary.json, plots/, checkpoint/)"),
)
EXAMPLES = (
    ("fedsparse", "FedAvg on mnist5k (ships with the install), 20 clients, 20 rounds"),
    ("fedsparse strategy=fedpm num_rounds=10 local_epochs=3", "FedPM: masks of frozen weights"),
    ("fedsparse strategy=lbgm strategy.delta=0.2 partition.alpha=0.1", "LBGM, skewed clients"),
    ("fedsparse --multirun strategy=fedavg,lips seed=0,1", "a sweep: 4 runs in multirun/"),
    ("fedsparse resume=true hydra.run.dir=outputs/<date>/<time>", "continue a stopped run"),
)


def help_text() -> str:
    cfg = compose_config([])
    lines = [
        "fedsparse: federated learning with sparse and compressed updates, on Flower.",
        "Strategies run on the server (FedAvg, LIPS, LBGM, FedPM, top-k, signSGD, FedProx,",
        "SCAFFOLD); clients train locally, simulated on Ray or deployed as SuperNodes.",
        "Configured with Hydra overrides:",
        "",
        "    fedsparse [group=option ...] [key=value ...] [--multirun] [--cfg job]",
        "",
        "Groups (defaults first):",
    ]
    for group, options in groups().items():
        default = str(cfg[group].name) if group in cfg and "name" in cfg[group] else ""
        ordered = [default, *(o for o in options if o != default)] if default else options
        lines.append(f"  {group:<10} {', '.join(ordered)}")
    lines += ["", "Most used keys (default):"]
    for key, what in MOST_USED:
        value = "outputs/…" if key.startswith("hydra.") else _default(cfg, key)
        lines.append(f"  {key:<18} {value:<10} {what}")
    lines += [
        "  strategy.<param>   per strategy: `fedsparse strategy=lips --cfg job` lists them",
        "",
        "Examples:",
    ]
    for command, what in EXAMPLES:
        lines.append(f"  {command}\n      {what}")
    lines += [
        "",
        "Each round prints one line; results go to the run folder. `fedsparse-compare <folder>`",
        "tabulates and plots the runs under one folder (a --multirun's) side by side. Ctrl-C",
        "stops a run and prints the command that continues it. Read on: README.md and docs/",
        "(strategies, configuration, scale, deployment, reliability, development). Hydra's own",
        "help: `fedsparse --hydra-help`.",
    ]
    return "\n".join(lines)


def _default(cfg: object, key: str) -> str:
    node = cfg
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return str(node)
