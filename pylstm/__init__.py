"""pylstm: fast LSTM networks on the CPU.

A compiled forward/backward kernel (Cython + scipy's BLAS), a layer with
torch.nn.LSTM's semantics (:class:`LSTM`), and scikit-learn estimators
(:class:`LSTMClassifier`, :class:`LSTMRegressor`, :class:`LSTMForecaster`; need
``pip install pylstm[sklearn]``), and NumPy helpers for variable-length sequences
and forecasting windows (:func:`pad_sequences`, :func:`unpad`, :func:`make_windows`).
"""
from typing import Any

from ._layer import LSTM, Gradients
from ._sequences import make_windows, pad_sequences, unpad
from ._threads import _init_from_environment, get_num_threads, set_num_threads, threads
from ._version import __version__

_init_from_environment()

__all__ = ["LSTM", "Gradients", "LSTMClassifier", "LSTMRegressor", "LSTMForecaster", "load",
           "save", "to_onnx", "pad_sequences", "unpad", "make_windows", "set_num_threads",
           "get_num_threads", "threads", "__version__"]

# Estimators import scikit-learn, an optional dependency: load them on first use
# so that `import pylstm` stays light and works without it.
_ESTIMATORS = {"LSTMClassifier": "_estimators", "LSTMRegressor": "_estimators",
               "LSTMForecaster": "_forecaster"}


def __getattr__(name: str) -> Any:
    if name == "to_onnx":  # needs the optional onnx package, imported on use
        from ._onnx import to_onnx

        return to_onnx
    if name in ("load", "save"):  # model files (zipfile, json): imported on first use
        from . import _io

        return getattr(_io, name)
    if name in _ESTIMATORS:
        import importlib

        try:
            module = importlib.import_module(f".{_ESTIMATORS[name]}", __name__)
        except ImportError as exc:
            if "sklearn" not in str(exc):
                raise
            raise ImportError(
                f"pylstm.{name} needs scikit-learn: pip install 'pylstm[sklearn]'") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'pylstm' has no attribute {name!r}")
