"""Model files: save and load layers and fitted estimators (being written, issue 6)."""
from __future__ import annotations

from typing import Any


def save(model: Any, path: Any) -> None:
    """Write ``model`` to ``path``."""
    raise NotImplementedError("model files are not implemented yet")


def load(path: Any) -> Any:
    """Read a model written by :func:`save`."""
    raise NotImplementedError("model files are not implemented yet")
