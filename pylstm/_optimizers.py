"""Adam and SGD over flat parameter vectors, updated in place.

The estimators keep their parameters in a few flat vectors (the LSTM's
``flat_parameters`` and the head's), so one update is one pass of the
kernel's elementwise loop per vector (``_kernel.adam_update``,
``_kernel.sgd_update``), with no Python loop over parameters or elements.
The rules and defaults are those of ``sklearn.neural_network``'s
``SGDOptimizer`` and ``AdamOptimizer``; the optimizers are plain objects with
no reference to the parameters, so an estimator holding one pickles cleanly.
"""
from __future__ import annotations

import math

import numpy as np

from . import _kernel


class _Optimizer:
    """Shared state: the learning rate."""

    def __init__(self, sizes: list[int], dtype: np.dtype, learning_rate_init: float) -> None:
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update every vector of ``params`` in place from the matching vector of ``grads``."""
        raise NotImplementedError

    def iteration_ends(self, time_step: int) -> None:
        """Called after each epoch with the number of samples seen so far."""

    def trigger_stopping(self, message: str, verbose: bool) -> bool:
        """Whether training should stop after ``n_iter_no_change`` epochs without progress."""
        if verbose:
            print(message + " Stopping.", flush=True)
        return True


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, as ``MLPClassifier(solver="sgd")``.

    Parameters
    ----------
    sizes : list of int
        Length of each flat parameter vector.
    dtype : numpy dtype
        Dtype of the parameters.
    learning_rate_init : float
    learning_rate : {"constant", "invscaling", "adaptive"}
        "invscaling" sets the rate to ``learning_rate_init / (t + 1) ** power_t``
        after each epoch, t being the number of samples seen; "adaptive" divides
        it by 5 each time training stops improving, until it falls below 1e-6.
    momentum : float
    nesterov : bool
    power_t : float
    """

    def __init__(self, sizes: list[int], dtype: np.dtype, learning_rate_init: float = 0.1,
                 learning_rate: str = "constant", momentum: float = 0.9,
                 nesterov: bool = True, power_t: float = 0.5) -> None:
        super().__init__(sizes, dtype, learning_rate_init)
        self.schedule = learning_rate
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.power_t = float(power_t)
        self._velocities = [np.zeros(size, dtype) for size in sizes]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        for param, grad, velocity in zip(params, grads, self._velocities):
            _kernel.sgd_update(param, grad, velocity, self.learning_rate, self.momentum,
                               self.nesterov)

    def iteration_ends(self, time_step: int) -> None:
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, message: str, verbose: bool) -> bool:
        if self.schedule != "adaptive":
            return super().trigger_stopping(message, verbose)
        if self.learning_rate <= 1e-6:
            return super().trigger_stopping(message + " Learning rate too small.", verbose)
        self.learning_rate /= 5.0
        if verbose:
            print(message + f" Setting learning rate to {self.learning_rate:f}", flush=True)
        return False


class Adam(_Optimizer):
    """Adam (Kingma and Ba, 2014), as ``MLPClassifier(solver="adam")``.

    Parameters
    ----------
    sizes : list of int
        Length of each flat parameter vector.
    dtype : numpy dtype
    learning_rate_init : float
    beta_1, beta_2 : float
        Decay rates of the first and second moment estimates, in [0, 1).
    epsilon : float
        Added to the denominator for numerical stability.
    """

    def __init__(self, sizes: list[int], dtype: np.dtype, learning_rate_init: float = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8) -> None:
        super().__init__(sizes, dtype, learning_rate_init)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.t = 0
        self._first_moments = [np.zeros(size, dtype) for size in sizes]
        self._second_moments = [np.zeros(size, dtype) for size in sizes]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        # bias-corrected step size, folded into one scalar as in scikit-learn
        rate = (self.learning_rate * math.sqrt(1 - self.beta_2 ** self.t)
                / (1 - self.beta_1 ** self.t))
        for param, grad, first, second in zip(
                params, grads, self._first_moments, self._second_moments):
            _kernel.adam_update(param, grad, first, second, rate, self.beta_1, self.beta_2,
                                self.epsilon)
