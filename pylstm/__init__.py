"""pylstm: fast LSTM networks on the CPU.

A compiled forward/backward kernel (Cython + scipy's BLAS), a layer with
torch.nn.LSTM's semantics (:class:`LSTM`), and scikit-learn estimators
(:class:`LSTMClassifier`, :class:`LSTMRegressor`; need ``pip install pylstm[sklearn]``).
"""
from typing import Any

from ._io import load, save
from ._layer import LSTM, Gradients
from ._version import __version__

__all__ = ["LSTM", "Gradients", "LSTMClassifier", "LSTMRegressor", "load", "save",
           "to_onnx", "__version__"]

# Estimators import scikit-learn, an optional dependency: load them on first use
# so that `import pylstm` stays light and works without it.
_ESTIMATORS = {"LSTMClassifier", "LSTMRegressor"}


def __getattr__(name: str) -> Any:
    if name == "to_onnx":  # needs the optional onnx package, imported on use
        from ._onnx import to_onnx

        return to_onnx
    if name in _ESTIMATORS:
        try:
            from . import _estimators
        except ImportError as exc:
            if "sklearn" not in str(exc):
                raise
            raise ImportError(
                f"pylstm.{name} needs scikit-learn: pip install 'pylstm[sklearn]'") from exc
        return getattr(_estimators, name)
    raise AttributeError(f"module 'pylstm' has no attribute {name!r}")
