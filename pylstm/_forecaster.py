"""``LSTMForecaster``: forecast a series (or several aligned ones) with an :class:`LSTMRegressor`.

The forecaster turns the series into supervised windows and back:

* scaling: each series (and each exogenous feature) is standardised with the
  mean and standard deviation of the training data, and predictions are
  mapped back;
* ``relative=True`` (default): inside each window, series values are taken
  relative to the window's last observed value, and so are the targets. The
  network learns changes, so a trend carries on past the range of values
  seen in training (an LSTM's bounded units cannot reach new levels otherwise);
* the input of one forecast is the last ``lookback`` steps, each holding the
  series' values; with exogenous features ``X`` each step also holds an
  "observed" flag (1) and that step's features, and the ``horizon`` steps to
  predict follow with the series' values zeroed, the flag 0 and their known
  features. The regressor's head on the final state gives all ``horizon``
  steps at once (``strategy="direct"``), or one step that is fed back as
  observed, ``horizon`` times (``strategy="recursive"``).

Shapes: a series ``y`` is (T,) or (T, n_series), time along axis 0;
exogenous ``X`` is (T,) or (T, n_exog), aligned with ``y``.
"""
from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._estimators import LSTMRegressor

__all__ = ["LSTMForecaster"]


class LSTMForecaster(BaseEstimator):
    """Multi-step forecaster on an LSTM: ``fit(y, X=None)``, then ``predict(horizon)``.

    Parameters
    ----------
    lookback : int
        Past steps the model reads for each forecast.
    horizon : int, default=1
        Steps predicted at once by ``strategy="direct"`` and the default of
        :meth:`predict`.
    strategy : {"direct", "recursive"}, default="direct"
        "direct" trains one model that outputs ``horizon`` steps; "recursive"
        trains a one-step model and feeds its predictions back, for any horizon.
    relative : bool, default=True
        Read each window relative to its last observed value (see the module
        docstring); turn off for stationary series around a fixed level.
    hidden_size : int, default=32
    num_layers : int, default=1
    max_iter : int, default=200
    learning_rate_init : float, default=1e-2
    batch_size : int or "auto", default="auto"
    alpha : float, default=0.0
    early_stopping : bool, default=False
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    dtype : {"float32", "float64"}, default="float32"
        Passed to the :class:`LSTMRegressor` with the parameters above.

    Attributes
    ----------
    regressor_ : LSTMRegressor
        The trained network, on scaled windows.
    n_series_ : int
    n_exog_ : int
        Exogenous features per step (0 without ``X``).
    y_mean_, y_scale_ : ndarray of shape (n_series,)
        Training statistics of the series.
    X_mean_, X_scale_ : ndarray of shape (n_exog,) or None
    last_window_ : ndarray of shape (lookback, n_series)
        The training series' last ``lookback`` values: :meth:`predict` starts there.
    last_X_window_ : ndarray of shape (lookback, n_exog) or None
    """

    def __init__(self, lookback: int, horizon: int = 1, *, strategy: str = "direct",
                 relative: bool = True, hidden_size: int = 32, num_layers: int = 1,
                 max_iter: int = 200, learning_rate_init: float = 1e-2,
                 batch_size: int | str = "auto", alpha: float = 0.0, early_stopping: bool = False,
                 random_state: int | np.random.RandomState | None = None, verbose: int = 0,
                 dtype: str | type | np.dtype = "float32"):
        self.lookback = lookback
        self.horizon = horizon
        self.strategy = strategy
        self.relative = relative
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.max_iter = max_iter
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype

    # ------------------------------------------------------------------ checks
    def _check_parameters(self) -> None:
        for name in ("lookback", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.strategy not in ("direct", "recursive"):
            raise ValueError(f"strategy must be 'direct' or 'recursive', got {self.strategy!r}")
        if not isinstance(self.relative, (bool, np.bool_)):
            raise ValueError(f"relative must be a bool, got {self.relative!r}")

    @staticmethod
    def _series(values: Any, name: str, n_columns: int | None = None) -> np.ndarray:
        """``values`` as a finite float64 (T, n_columns) array."""
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be an array of numbers: {exc}") from exc
        if array.ndim == 1:
            array = array[:, np.newaxis]
        if array.ndim != 2:
            raise ValueError(f"{name} must have shape (n_timesteps,) or (n_timesteps, n_columns) "
                             f"with time along axis 0, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite, but contains NaN or infinity")
        if n_columns is not None and array.shape[1] != n_columns:
            raise ValueError(f"{name} has {array.shape[1]} columns, but the forecaster was "
                             f"fitted with {n_columns}")
        return array

    # ------------------------------------------------------------------ windows
    @property
    def _model_horizon(self) -> int:
        return self.horizon if self.strategy == "direct" else 1

    def _inputs(self, y_scaled: np.ndarray, X_scaled: np.ndarray | None, ends: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs for forecasts starting at each index in ``ends`` (one past the last
        observed step), and each window's last values (subtracted when ``relative``)."""
        L, H = self.lookback, self._model_horizon
        steps = np.arange(-L, 0)
        past = y_scaled[ends[:, np.newaxis] + steps]                 # (n, L, k)
        last = past[:, -1:, :].copy() if self.relative else np.zeros_like(past[:, -1:, :])
        past = past - last
        if X_scaled is None:
            return past, last
        n, k = past.shape[0], past.shape[2]
        future = np.arange(H)
        sequence = np.zeros((n, L + H, k + 1 + X_scaled.shape[1]))
        sequence[:, :L, :k] = past
        sequence[:, :L, k] = 1.0
        sequence[:, :, k + 1:] = X_scaled[ends[:, np.newaxis] + np.concatenate([steps, future])]
        return sequence, last

    def _scale_X(self, X: np.ndarray) -> np.ndarray:
        return (X - self.X_mean_) / self.X_scale_

    # ------------------------------------------------------------------ public API
    def fit(self, y: Any, X: Any = None) -> LSTMForecaster:
        """Fit on a series ``y`` (T,) or several aligned series (T, n_series).

        Parameters
        ----------
        y : array-like of shape (n_timesteps,) or (n_timesteps, n_series)
            Needs at least ``lookback + horizon`` steps (``lookback + 1`` for
            ``strategy="recursive"``).
        X : array-like of shape (n_timesteps,) or (n_timesteps, n_exog), default=None
            Exogenous features aligned with ``y``; :meth:`predict` then needs
            their future values.

        Returns
        -------
        self : object
        """
        self._check_parameters()
        y_ndim = np.ndim(y)
        y = self._series(y, "y")
        L, H = self.lookback, self._model_horizon
        if y.shape[0] < L + H:
            raise ValueError(f"y has {y.shape[0]} time steps, but lookback={L} and a "
                             f"{'horizon' if self.strategy == 'direct' else 'step'} of {H} need "
                             f"at least {L + H}")
        self._y_ndim = 1 if y_ndim == 1 else 2
        self.n_series_ = y.shape[1]
        self.y_mean_ = y.mean(axis=0)
        scale = y.std(axis=0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)
        y_scaled = (y - self.y_mean_) / self.y_scale_
        if X is None:
            self.n_exog_ = 0
            self.X_mean_ = self.X_scale_ = self.last_X_window_ = None
            X_scaled = None
        else:
            X = self._series(X, "X")
            if X.shape[0] != y.shape[0]:
                raise ValueError(f"X has {X.shape[0]} time steps, but y has {y.shape[0]}: "
                                 f"exogenous features must be aligned with y")
            self.n_exog_ = X.shape[1]
            self.X_mean_ = X.mean(axis=0)
            scale = X.std(axis=0)
            self.X_scale_ = np.where(scale > 0, scale, 1.0)
            X_scaled = self._scale_X(X)
            self.last_X_window_ = X[-L:].copy()
        ends = np.arange(L, y.shape[0] - H + 1)
        inputs, last = self._inputs(y_scaled, X_scaled, ends)
        targets = y_scaled[ends[:, np.newaxis] + np.arange(H)] - last    # (n, H, k)
        self.regressor_ = LSTMRegressor(
            hidden_size=self.hidden_size, num_layers=self.num_layers, max_iter=self.max_iter,
            learning_rate_init=self.learning_rate_init, batch_size=self.batch_size,
            alpha=self.alpha, early_stopping=self.early_stopping,
            random_state=self.random_state, verbose=self.verbose, dtype=self.dtype)
        self.regressor_.fit(inputs, targets.reshape(targets.shape[0], -1))
        self.last_window_ = y[-L:].copy()
        return self

    def predict(self, horizon: int | None = None, X: Any = None, y: Any = None) -> np.ndarray:
        """Forecast the next ``horizon`` steps after the training series, or after ``y``.

        Parameters
        ----------
        horizon : int, default=None
            Steps to forecast; ``self.horizon`` when None. With
            ``strategy="direct"`` at most ``self.horizon``.
        X : array-like of shape (horizon, n_exog), default=None
            Future exogenous features; required if ``fit`` had X, refused
            otherwise. With ``y`` given, X must cover ``y``'s steps too:
            shape (len(y) + horizon, n_exog). With ``strategy="direct"`` X
            covers the trained ``self.horizon`` future steps even when a
            shorter ``horizon`` is asked for: each forecast reads them all.
        y : array-like of shape (n_timesteps,) or (n_timesteps, n_series), default=None
            Continue from the end of this series (at least ``lookback`` steps)
            instead of the training data's.

        Returns
        -------
        ndarray of shape (horizon,) for a 1-D training series, else (horizon, n_series)
        """
        check_is_fitted(self)
        horizon = self.horizon if horizon is None else horizon
        if isinstance(horizon, bool) or not isinstance(horizon, Integral) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if self.strategy == "direct" and horizon > self.horizon:
            raise ValueError(f"horizon={horizon} exceeds the horizon={self.horizon} this direct "
                             f"forecaster was trained for; refit with a longer horizon or use "
                             f"strategy='recursive'")
        L, k = self.lookback, self.n_series_
        if y is None:
            history = self.last_window_
        else:
            history = self._series(y, "y", k)
            if history.shape[0] < L:
                raise ValueError(f"y has {history.shape[0]} time steps, but lookback={L} "
                                 f"needs at least {L}")
            history = history[-L:]
        future_X = None
        if self.n_exog_:
            if X is None:
                raise ValueError(f"X is required: the forecaster was fitted with "
                                 f"{self.n_exog_} exogenous features, so predict needs their "
                                 f"future values")
            X = self._series(X, "X", self.n_exog_)
            # A direct model reads the features of every step it was trained to
            # forecast, whichever of those forecasts are asked for.
            future_rows = self._model_horizon if self.strategy == "direct" else horizon
            expected = future_rows + (0 if y is None else np.shape(y)[0])
            if X.shape[0] != expected:
                what = "the trained horizon" if self.strategy == "direct" else "horizon"
                raise ValueError(f"X has {X.shape[0]} time steps, expected {expected} ("
                                 + (what if y is None else f"len(y) + {what}") + ")")
            past_X = self.last_X_window_ if y is None else X[:-future_rows][-L:]
            future_X = self._scale_X(np.concatenate([past_X, X[-future_rows:]]))
        elif X is not None:
            raise ValueError("X was given, but the forecaster was fitted without exogenous "
                             "features")
        y_scaled = (history - self.y_mean_) / self.y_scale_
        H = self._model_horizon
        if self.strategy == "direct":
            forecast = self._step(y_scaled, future_X, 0, H)[:horizon]
        else:
            values = list(y_scaled)
            for step in range(horizon):
                values.append(self._step(np.asarray(values[-L:]), future_X, step, 1)[0])
            forecast = np.asarray(values[L:])
        forecast = forecast * self.y_scale_ + self.y_mean_
        return forecast[:, 0] if self._y_ndim == 1 else forecast

    def save(self, path: Any) -> None:
        """Write this fitted forecaster to one model file, atomically and without pickle."""
        from ._io import save

        save(self, path)

    def _step(self, window: np.ndarray, future_X: np.ndarray | None, offset: int,
              H: int) -> np.ndarray:
        """Scaled (H, k) prediction after one scaled (lookback, k) window; ``offset`` steps
        into the forecast (which rows of ``future_X`` are past and future)."""
        L = self.lookback
        y_scaled = np.concatenate([window, np.zeros((H, window.shape[1]))])
        X_scaled = None
        if future_X is not None:
            X_scaled = future_X[offset:offset + L + H]
        inputs, last = self._inputs(y_scaled, X_scaled, np.array([L]))
        prediction = self.regressor_.predict(inputs).reshape(H, -1)
        return prediction + last[0]
