"""One module per op family; each registers its entry points (fuzz/registry.py)."""
