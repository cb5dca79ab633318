"""The fleet tests need Flower with its simulation engine (the `fleet-sim` extra, `make test-fleet`'s environment);
other environments leave them out (tests/common/test_fleet_without_extra.py checks the message they get)."""

import importlib.util

if importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None:
    collect_ignore_glob = ["test_*.py"]
