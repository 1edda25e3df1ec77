"""ServerApp side of fedsparse: config, the round loop, results, checkpoints and the CLI."""
