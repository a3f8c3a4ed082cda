"""The `recsys` command: main.py builds it, one module per command group."""
