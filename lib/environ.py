"""Scoped environment variables, for libraries that read a setting only from the environment."""
import os
from contextlib import contextmanager


@contextmanager
def scoped_env(name: str, value: str):
    """Set os.environ[name] = value inside the block; restore the previous state after."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
