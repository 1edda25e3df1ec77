"""Scale benchmark: round time and memory of fedsparse against plain Flower and plain PyTorch."""
