"""pylstm: fast LSTM networks on the CPU.

A compiled forward/backward kernel (Cython + scipy's BLAS), a layer with
torch.nn.LSTM's semantics (:class:`LSTM`), and scikit-learn estimators.
"""
from ._layer import LSTM, Gradients
from ._version import __version__

__all__ = ["LSTM", "Gradients", "__version__"]
