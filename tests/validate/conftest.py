"""Session-wide state for the validator tests: each invariant (and its control) runs once.

The model builders in validate.models are cached per process, so every test in the
session shares the same tiny models.
"""
import pytest


@pytest.fixture(scope="session")
def outcomes():
    """name -> Outcome, filled lazily: an invariant runs the first time a test asks for it."""
    from validate import models
    from validate.invariants import select

    models.quiet()
    registry = {inv.name: inv for inv in select()}
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = registry[name].run()
        return cache[name]

    get.names = list(registry)
    return get
