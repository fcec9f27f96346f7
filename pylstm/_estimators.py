"""scikit-learn estimators on top of :class:`pylstm.LSTM`: ``LSTMClassifier`` and ``LSTMRegressor``.

The model is the LSTM stack followed by a linear head on the top layer's final
hidden state (both directions' final states, concatenated, when bidirectional)::

    features = concat(h_n[-D:])            (batch, D * P)
    logits   = features @ head_coef_ + head_intercept_

trained with softmax cross-entropy (classifier, binary included) or half the
mean squared error (regressor), by mini-batch Adam or SGD. Parameter names,
defaults, fitted attributes and the stopping rule follow scikit-learn's
``MLPClassifier`` / ``MLPRegressor``.

All parameters live in two flat vectors, the LSTM's ``flat_parameters`` and
``_head`` (head weights then intercepts), and so do their gradients; the
optimizers (``_optimizers.py``) update those vectors in place.
"""
from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_array,
                                      check_consistent_length, check_is_fitted,
                                      column_or_1d)

from ._layer import LSTM
from ._optimizers import SGD, Adam
from ._validation import resolve_dtype

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6
    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)

__all__ = ["LSTMClassifier", "LSTMRegressor"]

# Inference runs over at most this many sequences at a time, bounding the
# (batch, time, D * P) buffers between stacked layers.
_PREDICT_CHUNK = 1024
# With verbose, an epoch longer than this many seconds also reports its batches.
_PROGRESS_SECONDS = 10.0


class _BaseLSTM(BaseEstimator):
    """Shared fit loop, input conversion and model of the two estimators."""

    def __init__(self, hidden_size=64, *, num_layers=1, bidirectional=False, dropout=0.0,
                 solver="adam", learning_rate_init=1e-3, batch_size="auto", max_iter=200,
                 alpha=0.0, clip_norm=5.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, shuffle=True, random_state=None, verbose=0,
                 warm_start=False, dtype="float32", learning_rate="constant", power_t=0.5,
                 momentum=0.9, nesterovs_momentum=True, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.alpha = alpha
        self.clip_norm = clip_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.shuffle = shuffle
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.dtype = dtype
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    # ------------------------------------------------------------------ tags
    def save(self, path: Any) -> None:
        """Write this fitted estimator to one model file (see :func:`pylstm.load`); atomic, no pickle."""
        from ._io import save

        save(self, path)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------ head views
    @property
    def head_coef_(self) -> np.ndarray:
        """Head weights, shape (D * P, n_outputs): a live view into the flat head vector."""
        check_is_fitted(self)
        rows = self.lstm_.num_directions * self.lstm_.output_size
        return self._head[:rows * self._n_head_outputs].reshape(rows, self._n_head_outputs)

    @property
    def head_intercept_(self) -> np.ndarray:
        """Head intercepts, shape (n_outputs,): a live view into the flat head vector."""
        check_is_fitted(self)
        return self._head[-self._n_head_outputs:]

    # ------------------------------------------------------------------ validation
    def _check_hyperparameters(self) -> np.dtype:
        """Validate every constructor parameter (in fit, as scikit-learn does); return the dtype."""
        def check(name, kind, low=None, high=None, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                expected = "an int" if kind is Integral else "a number"
                raise ValueError(f"{name} must be {expected}, got {value!r}")
            if (low is not None and (value < low or (low_open and value == low))) or \
                    (high is not None and (value > high or (high_open and value == high))):
                left = "(" if low_open else "["
                right = ")" if high_open else "]"
                raise ValueError(f"{name} must lie in {left}{low}, {'inf' if high is None else high}"
                                 f"{right}, got {value!r}")

        for name in ("hidden_size", "num_layers", "max_iter", "n_iter_no_change"):
            check(name, Integral, 1)
        if self.batch_size != "auto":
            check("batch_size", Integral, 1)
        check("dropout", Real, 0, 1, high_open=True)
        check("learning_rate_init", Real, 0, low_open=True)
        check("alpha", Real, 0)
        if self.clip_norm is not None:
            check("clip_norm", Real, 0, low_open=True)
        check("validation_fraction", Real, 0, 1, low_open=True, high_open=True)
        check("tol", Real, 0)
        check("power_t", Real, 0)
        check("momentum", Real, 0, 1)
        check("beta_1", Real, 0, 1, high_open=True)
        check("beta_2", Real, 0, 1, high_open=True)
        check("epsilon", Real, 0, low_open=True)
        if not isinstance(self.verbose, bool):
            check("verbose", Integral, 0)
        for name in ("bidirectional", "early_stopping", "shuffle", "warm_start",
                     "nesterovs_momentum"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, options in (("solver", ("adam", "sgd")),
                              ("learning_rate", ("constant", "invscaling", "adaptive"))):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        try:
            return resolve_dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}") from exc

    def _convert_X(self, X: Any, *, reset: bool, dtype: np.dtype) -> np.ndarray:
        """Turn X into a C-contiguous (n_samples, n_timesteps, n_features) array of the model's dtype.

        The single entry point for input: 2-D X, ``(n, T)``, is a batch of
        univariate series and goes through scikit-learn's ``validate_data``, so
        ``n_features_in_`` (= T) and ``feature_names_in_`` behave as scikit-learn
        expects; for 3-D X, ``n_features_in_`` is the number of features per step
        and any sequence length is valid.
        """
        name = type(self).__name__
        if not hasattr(X, "ndim"):
            X = np.asarray(X)
        ndim = X.ndim
        fitted_2d = not reset and self._fit_ndim == 2
        if ndim == 3:
            X = check_array(X, dtype=dtype, allow_nd=True, order="C")
            features = X.shape[2]
            if reset:
                self.n_features_in_ = features
                self._fit_ndim = 3
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif fitted_2d and features != 1:
                raise ValueError(f"X has {features} features per time step, but {name} was "
                                 f"fitted on univariate series (2-D X) and expects 1")
            elif not fitted_2d and features != self.n_features_in_:
                raise ValueError(f"X has {features} features, but {name} is expecting "
                                 f"{self.n_features_in_} features as input.")
            return X
        if ndim == 2 and not reset and not fitted_2d:
            # fitted on 3-D X: a 2-D X is univariate series of any length
            X = check_array(X, dtype=dtype, order="C")
            if self.n_features_in_ != 1:
                raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                                 f"{self.n_features_in_} features as input.")
            return X[:, :, np.newaxis]
        if ndim > 3:
            raise ValueError(f"X must have 2 dimensions (n_samples, n_timesteps) or 3 "
                             f"(n_samples, n_timesteps, n_features), got shape {np.shape(X)}")
        X = _validate_data(self, X, reset=reset, dtype=dtype, order="C")
        if reset:
            self._fit_ndim = 2
        return X[:, :, np.newaxis]

    # ------------------------------------------------------------------ model
    def _initialize(self, n_step_features: int, n_outputs: int, dtype: np.dtype,
                    y: np.ndarray, sample_weight: np.ndarray) -> None:
        """New LSTM and head, fresh fit attributes (as MLP's ``_initialize``)."""
        rng = self._rng
        self.lstm_ = LSTM(n_step_features, self.hidden_size, self.num_layers,
                          bidirectional=bool(self.bidirectional), dropout=float(self.dropout),
                          dtype=dtype, random_state=int(rng.integers(2**63 - 1)))
        fan_in = self.lstm_.num_directions * self.lstm_.output_size
        self._n_head_outputs = n_outputs
        self._head = np.zeros(fan_in * n_outputs + n_outputs, dtype)
        # Glorot uniform, as MLP's hidden and output layers
        bound = math.sqrt(6.0 / (fan_in + n_outputs))
        self._head[:fan_in * n_outputs] = rng.uniform(-bound, bound, fan_in * n_outputs)
        self._head[fan_in * n_outputs:] = self._initial_intercept(y, sample_weight)
        # 1 on weights, 0 on biases: the L2 penalty covers weights only, as in MLP
        self._l2_masks = [
            np.concatenate([np.full(value.size, not name.startswith("bias"), dtype)
                            for name, value in self.lstm_.state_dict().items()]),
            np.concatenate([np.ones(fan_in * n_outputs, dtype), np.zeros(n_outputs, dtype)])]
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_ = None
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf
        self._best_params = None

    def _initial_intercept(self, y: np.ndarray, sample_weight: np.ndarray) -> Any:
        return 0.0

    def _params(self) -> list[np.ndarray]:
        return [self.lstm_.flat_parameters, self._head]

    def _features(self, X: np.ndarray) -> np.ndarray:
        """Top layer's final hidden states, (n, D * P), by inference in chunks of sequences."""
        lstm = self.lstm_
        D = lstm.num_directions
        features = np.empty((X.shape[0], D * lstm.output_size), lstm.dtype)
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            _, (h_n, _) = lstm(X[start:start + _PREDICT_CHUNK])
            features[start:start + _PREDICT_CHUNK] = _last_states(h_n, D)
        return features

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._features(X) @ self.head_coef_ + self.head_intercept_

    def _make_optimizer(self, dtype: np.dtype):
        sizes = [p.size for p in self._params()]
        if self.solver == "sgd":
            return SGD(sizes, dtype, self.learning_rate_init, self.learning_rate,
                       self.momentum, self.nesterovs_momentum, self.power_t)
        return Adam(sizes, dtype, self.learning_rate_init, self.beta_1, self.beta_2,
                    self.epsilon)

    # ------------------------------------------------------------------ one step
    def _batch_gradients(self, X: np.ndarray, targets: np.ndarray, weights: np.ndarray
                         ) -> tuple[float, list[np.ndarray]]:
        """Loss and flat gradients [LSTM, head] of one mini-batch (includes the L2 term)."""
        lstm = self.lstm_
        D, P = lstm.num_directions, lstm.output_size
        _, (h_n, c_n), cache = lstm.forward_train(X, rng=self._rng)
        features = _last_states(h_n, D)                                  # (B, D*P)
        coef, intercept = self.head_coef_, self.head_intercept_
        logits = features @ coef + intercept                              # (B, n_out)
        weight_sum = float(weights.sum())
        loss, d_logits = self._loss_gradient(logits, targets, weights / weights.dtype.type(weight_sum))
        grad_head = np.empty_like(self._head)
        n_coef = coef.size
        np.matmul(features.T, d_logits, out=grad_head[:n_coef].reshape(coef.shape))
        grad_head[n_coef:] = d_logits.sum(axis=0)
        d_features = d_logits @ coef.T                                    # (B, D*P)
        batch = X.shape[0]
        d_h_n = np.zeros_like(h_n)
        d_h_n[-D:] = d_features.reshape(batch, D, P).transpose(1, 0, 2)
        grads = [lstm.backward(cache, grad_state=(d_h_n, np.zeros_like(c_n))).flat, grad_head]
        if self.alpha:
            scale = self.alpha / weight_sum
            for param, grad, mask in zip(self._params(), grads, self._l2_masks):
                masked = param * mask
                loss += 0.5 * scale * float(np.dot(masked, masked))
                masked *= grad.dtype.type(scale)
                grad += masked
        return loss, grads

    # ------------------------------------------------------------------ fit loop
    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool,
             classes: Any = None) -> "_BaseLSTM":
        dtype = self._check_hyperparameters()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             f"y is None.")
        first_pass = not hasattr(self, "lstm_") or (not self.warm_start and not incremental)
        if not first_pass:
            dtype = self.lstm_.dtype
        X = self._convert_X(X, reset=first_pass, dtype=dtype)
        targets, n_outputs = self._encode_targets(y, X, dtype, first_pass, incremental, classes)
        sample_weight = _check_sample_weight(sample_weight, X, dtype=dtype)
        if first_pass or not hasattr(self, "_rng"):
            # (a model file holds no training state: a loaded estimator that goes
            # on training starts a fresh random stream and optimizer)
            self._rng = np.random.default_rng(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if first_pass:
            self._initialize(X.shape[2], n_outputs, dtype, targets, sample_weight)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer(dtype)
        self._fit_stochastic(X, targets, sample_weight, incremental)
        return self

    def _fit_stochastic(self, X: np.ndarray, targets: np.ndarray, sample_weight: np.ndarray,
                        incremental: bool) -> None:
        name = type(self).__name__
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = targets if self._stratify else None
            X, X_val, targets, targets_val, sample_weight, weight_val = train_test_split(
                X, targets, sample_weight, test_size=self.validation_fraction, stratify=stratify,
                random_state=int(self._rng.integers(np.iinfo(np.int32).max)))
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        n_batches = -(-n_samples // batch_size)
        params = self._params()
        optimizer = self._optimizer
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                epoch_start = last_report = time.perf_counter()
                order = self._rng.permutation(n_samples) if self.shuffle else None
                accumulated_loss = 0.0
                for batch_index, start in enumerate(range(0, n_samples, batch_size)):
                    if order is None:
                        rows = slice(start, start + batch_size)
                    else:
                        rows = order[start:start + batch_size]
                    X_batch = X[rows]
                    loss, grads = self._batch_gradients(X_batch, targets[rows],
                                                        sample_weight[rows])
                    norm = math.sqrt(sum(float(np.dot(g, g)) for g in grads))
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        self._diverged(loss, norm)
                    if self.clip_norm is not None and norm > self.clip_norm:
                        for grad in grads:
                            grad *= grad.dtype.type(self.clip_norm / norm)
                    optimizer.step(params, grads)
                    accumulated_loss += loss * X_batch.shape[0]
                    if self.verbose and time.perf_counter() - last_report > _PROGRESS_SECONDS:
                        last_report = time.perf_counter()
                        print(f"Epoch {self.n_iter_ + 1}: batch {batch_index + 1}/{n_batches}, "
                              f"running loss = {accumulated_loss / min(n_samples, start + batch_size):.6f}",
                              flush=True)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if early_stopping:
                    score = self._validation_score(X_val, targets_val, weight_val)
                    self.validation_scores_.append(score)
                    improved = score > self.best_validation_score_
                    if score < self.best_validation_score_ + self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if improved:
                        self.best_validation_score_ = score
                else:
                    improved = self.loss_ < self.best_loss_
                    if self.loss_ > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if improved:
                        self.best_loss_ = self.loss_
                if improved or self._best_params is None:
                    self._best_params = [p.copy() for p in params]
                if self.verbose:
                    line = f"Epoch {self.n_iter_}/{self.max_iter}: loss = {self.loss_:.6f}"
                    if early_stopping:
                        line += f", validation score = {self.validation_scores_[-1]:.6f}"
                    print(f"{line}, {time.perf_counter() - epoch_start:.2f}s", flush=True)
                optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        message = (f"Validation score did not improve more than tol={self.tol:f}"
                                   f" for {self.n_iter_no_change} consecutive epochs.")
                    else:
                        message = (f"Training loss did not improve more than tol={self.tol:f}"
                                   f" for {self.n_iter_no_change} consecutive epochs.")
                    if optimizer.trigger_stopping(message, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"{name}: maximum iterations ({self.max_iter}) reached and "
                                  f"the optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user; keeping the best weights so far.")
            self._restore_best()
            return
        if early_stopping:
            self._restore_best()

    def _restore_best(self) -> None:
        if self._best_params is not None:
            for param, best in zip(self._params(), self._best_params):
                param[...] = best

    def _diverged(self, loss: float, norm: float) -> None:
        """Stop a fit whose loss or gradient is no longer finite, keeping finite weights."""
        clip = ("set clip_norm (now None), e.g. 5.0" if self.clip_norm is None
                else f"a smaller clip_norm (now {self.clip_norm})")
        if self._best_params is None:
            kept = "the weights are those before the failing update"
        else:
            self._restore_best()
            kept = "the weights are those of the best epoch so far"
        raise ValueError(
            f"{type(self).__name__} diverged in epoch {self.n_iter_ + 1}: the training loss "
            f"became {loss} (gradient norm {norm}). Try a lower learning_rate_init (now "
            f"{self.learning_rate_init}) or {clip}; {kept}.")

    # ------------------------------------------------------------------ public API
    def fit(self, X, y, sample_weight=None):
        """Fit the model to sequences X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps)
            Sequences; 2-D X is a batch of univariate series.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier) or real targets (regressor).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the loss.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _predict_checked(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._logits(self._convert_X(X, reset=False, dtype=self.lstm_.dtype))


class LSTMClassifier(ClassifierMixin, _BaseLSTM):
    """Sequence classifier: an LSTM stack and a softmax head on its last time step.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` where the
    concept is the same.

    Parameters
    ----------
    hidden_size : int, default=64
        Memory cells per layer and direction.
    num_layers : int, default=1
        Stacked LSTM layers.
    bidirectional : bool, default=False
        Add a reverse-time direction; the head reads both directions' final states.
    dropout : float, default=0.0
        Dropout between stacked layers, during training only.
    solver : {"adam", "sgd"}, default="adam"
    learning_rate_init : float, default=1e-3
    batch_size : int or "auto", default="auto"
        "auto" is ``min(200, n_samples)``.
    max_iter : int, default=200
        Maximum number of epochs.
    alpha : float, default=0.0
        L2 penalty on the weights (not the biases).
    clip_norm : float or None, default=5.0
        Clip the gradient's global norm (all parameters together) to this value.
    early_stopping : bool, default=False
        Hold out a stratified ``validation_fraction`` of the data, stop when its
        accuracy stops improving, and restore the best weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
        Makes fit reproducible: initial weights, shuffling, dropout masks and
        the validation split.
    verbose : int, default=0
        1 prints one line per epoch (and batch progress in epochs over 10 s).
    warm_start : bool, default=False
    dtype : {"float32", "float64"}, default="float32"
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Schedule for ``solver="sgd"``.
    power_t : float, default=0.5
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    lstm_ : pylstm.LSTM
        The trained LSTM stack.
    head_coef_ : ndarray of shape (D * P, n_classes)
    head_intercept_ : ndarray of shape (n_classes,)
    n_iter_ : int
        Epochs run by the last ``fit`` (1 after ``partial_fit``).
    t_ : int
        Training samples seen.
    loss_ : float
        Last epoch's mean training loss.
    loss_curve_ : list of float
    best_loss_ : float or None
        None with early stopping.
    validation_scores_ : list of float or None
        Validation accuracy per epoch; None without early stopping.
    best_validation_score_ : float or None
    n_features_in_ : int
        Features per time step for 3-D X; the number of columns (time steps) for 2-D X.
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    """

    _stratify = True

    def _encode_targets(self, y, X, dtype, first_pass, incremental, classes):
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        if incremental and not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(classes)
        elif not incremental and first_pass:
            self.classes_ = unique_labels(y)
        elif not incremental and self.warm_start:
            if set(unique_labels(y)) != set(self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same classes "
                                 "as in the previous call to fit. Previously got "
                                 f"{self.classes_}, `y` has {unique_labels(y)}")
        unseen = np.setdiff1d(unique_labels(y), self.classes_)
        if unseen.size:
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. 'y' has {unique_labels(y)}.")
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                             f"got 1 class: {self.classes_[0]!r}")
        return np.searchsorted(self.classes_, y).astype(np.intp), len(self.classes_)

    @staticmethod
    def _loss_gradient(logits, labels, weights):
        """Softmax cross-entropy: (weighted mean loss, dL/dlogits); ``weights`` sum to 1."""
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = np.arange(labels.shape[0])
        loss = float(np.dot(weights, np.log(total[:, 0]) - shifted[rows, labels]))
        exp /= total                       # softmax probabilities
        exp[rows, labels] -= 1
        exp *= weights[:, np.newaxis]
        return loss, exp

    def _validation_score(self, X, labels, weights):
        return accuracy_score(labels, self._logits(X).argmax(axis=1), sample_weight=weights)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            All classes; required on the first call, ignored afterwards.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``."""
        logits = self._predict_checked(X).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most probable class of each sequence, shape (n_samples,)."""
        logits = self._predict_checked(X)
        return self.classes_[logits.argmax(axis=1)]


class LSTMRegressor(RegressorMixin, _BaseLSTM):
    """Sequence regressor: an LSTM stack and a linear head on its last time step.

    Trained on half the mean squared error. Parameters and attributes are those
    of :class:`LSTMClassifier`, without ``classes_``; ``head_coef_`` has shape
    (D * P, n_outputs), ``validation_scores_`` holds R², and the head's
    intercept starts at the (weighted) mean of y so that unscaled targets do
    not spend the first epochs learning their offset.

    Parameters
    ----------
    hidden_size : int, default=64
    See :class:`LSTMClassifier` for the others.

    Attributes
    ----------
    n_outputs_ : int
    lstm_, head_coef_, head_intercept_, n_iter_, t_, loss_, loss_curve_, best_loss_,
    validation_scores_, best_validation_score_, n_features_in_
        As in :class:`LSTMClassifier`.
    """

    _stratify = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}

    def _encode_targets(self, y, X, dtype, first_pass, incremental, classes):
        y = check_array(y, ensure_2d=False, dtype=dtype, input_name="y")
        check_consistent_length(X, y)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2:
            raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs), "
                             f"got shape {y.shape}")
        if first_pass:
            self.n_outputs_ = y.shape[1]
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, but {type(self).__name__} was "
                             f"fitted with {self.n_outputs_}")
        return np.ascontiguousarray(y), y.shape[1]

    def _initial_intercept(self, y, sample_weight):
        return np.average(y, axis=0, weights=sample_weight)

    @staticmethod
    def _loss_gradient(predictions, targets, weights):
        """Half the squared error, mean over outputs, weighted mean over samples."""
        residual = predictions - targets
        n_outputs = residual.shape[1]
        loss = 0.5 * float(np.dot(weights, np.einsum("ij,ij->i", residual, residual))) / n_outputs
        residual *= (weights / weights.dtype.type(n_outputs))[:, np.newaxis]
        return loss, residual

    def _validation_score(self, X, targets, weights):
        return r2_score(targets, self._logits(X), sample_weight=weights)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predicted targets, shape (n_samples,) or (n_samples, n_outputs)."""
        predictions = self._predict_checked(X).astype(np.float64)
        return predictions.ravel() if self.n_outputs_ == 1 else predictions


def _last_states(h_n: np.ndarray, num_directions: int) -> np.ndarray:
    """(L*D, B, P) final states -> (B, D*P): the top layer's directions side by side."""
    top = h_n[-num_directions:]
    return np.ascontiguousarray(top.transpose(1, 0, 2)).reshape(top.shape[1], -1)
