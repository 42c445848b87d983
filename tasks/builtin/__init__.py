"""Built-in tasks: each folder holds task.toml, recipe/, evaluator.py, data.py and harness.py."""
