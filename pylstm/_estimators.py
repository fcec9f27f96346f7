"""scikit-learn estimators on top of :class:`pylstm.LSTM`: ``LSTMClassifier`` and ``LSTMRegressor``.

The model is the LSTM stack followed by a linear head on the top layer's final
hidden state (both directions' final states, concatenated, when bidirectional)::

    features = concat(h_n[-D:])            (batch, D * P)
    logits   = features @ head_coef_ + head_intercept_

or, with ``output="sequence"``, the same head on the top layer's output at
every valid step (``out[b, t]``, ``t < lengths[b]``), one prediction per step,
the loss averaged over valid steps only.

``X`` may also be a list of sequences of different lengths, ``(T_i, n_features)``
or ``(T_i,)``: it is padded once (``_sequences.pad_sequences``) and every call
to the layer passes the ``lengths``, so padding is never computed on, each
sequence's prediction depends on its own steps only, and a bidirectional
model reads each sequence backwards from its own end. With ``shuffle=True``
the mini-batches of such data group sequences of similar length
(``_sequences.bucket_batches``) and are trimmed to their longest sequence.

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
from typing import Any, TypeVar

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

from . import _kernel
from ._layer import LSTM
from ._optimizers import SGD, Adam
from ._sequences import _as_sequences, bucket_batches, pad_sequences, unpad
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


_Estimator = TypeVar("_Estimator", bound="_BaseLSTM")


class _BaseLSTM(BaseEstimator):
    """Shared fit loop, input conversion and model of the two estimators."""

    def __init__(self, hidden_size: int = 64, *, output: str = "last", num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, solver: str = "adam",
                 learning_rate_init: float = 1e-3, batch_size: int | str = "auto",
                 max_iter: int = 200, alpha: float = 0.0, clip_norm: float | None = 5.0,
                 early_stopping: bool = False, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 10, tol: float = 1e-4, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, verbose: int = 0,
                 warm_start: bool = False, dtype: str | type | np.dtype = "float32",
                 learning_rate: str = "constant", power_t: float = 0.5, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8):
        self.hidden_size = hidden_size
        self.output = output
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
        for name, options in (("output", ("last", "sequence")), ("solver", ("adam", "sgd")),
                              ("learning_rate", ("constant", "invscaling", "adaptive"))):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        try:
            return resolve_dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}") from exc

    def _convert_X(self, X: Any, *, reset: bool, dtype: np.dtype
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Turn X into a C-contiguous (n_samples, n_timesteps, n_features) array and its lengths.

        The single entry point for input: 2-D X, ``(n, T)``, is a batch of
        univariate series and goes through scikit-learn's ``validate_data``, so
        ``n_features_in_`` (= T) and ``feature_names_in_`` behave as scikit-learn
        expects; for 3-D X, ``n_features_in_`` is the number of features per step
        and any sequence length is valid. Lengths are None for those.

        A list (or tuple) of sequences, ``(T_i, n_features)`` or ``(T_i,)``, is
        padded after each sequence and comes back with its lengths; it is read
        as 3-D X (``n_features_in_`` counts features per step), since
        scikit-learn's ``check_array`` refuses arrays of unequal lengths.
        """
        name = type(self).__name__
        sequences = _sequence_list(X)
        if sequences is not None:
            arrays = _as_sequences(sequences, "X")
            X, lengths = pad_sequences(arrays, dtype=dtype)
            if not np.isfinite(X).all():  # finite before, too large for float32 now
                raise ValueError(f"X has values too large for {np.dtype(dtype).name}")
            self._check_step_features(X.shape[2], reset)
            return X, lengths
        if not hasattr(X, "ndim"):
            X = np.asarray(X)
        ndim = X.ndim
        fitted_2d = not reset and self._fit_ndim == 2
        if ndim == 3:
            X = check_array(X, dtype=dtype, allow_nd=True, order="C")
            self._check_step_features(X.shape[2], reset)
            return X, None
        if ndim == 2 and not reset and not fitted_2d:
            # fitted on 3-D X: a 2-D X is univariate series of any length
            X = check_array(X, dtype=dtype, order="C")
            if self.n_features_in_ != 1:
                raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                                 f"{self.n_features_in_} features as input.")
            return X[:, :, np.newaxis], None
        if ndim > 3:
            raise ValueError(f"X must have 2 dimensions (n_samples, n_timesteps) or 3 "
                             f"(n_samples, n_timesteps, n_features), got shape {np.shape(X)}")
        X = _validate_data(self, X, reset=reset, dtype=dtype, order="C")
        if reset:
            self._fit_ndim = 2
        return X[:, :, np.newaxis], None

    def _check_step_features(self, features: int, reset: bool) -> None:
        """Record (fit) or check (afterwards) the number of features per step of 3-D X."""
        name = type(self).__name__
        if reset:
            self.n_features_in_ = features
            self._fit_ndim = 3
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif self._fit_ndim == 2 and features != 1:
            raise ValueError(f"X has {features} features per time step, but {name} was "
                             f"fitted on univariate series (2-D X) and expects 1")
        elif self._fit_ndim != 2 and features != self.n_features_in_:
            raise ValueError(f"X has {features} features, but {name} is expecting "
                             f"{self.n_features_in_} features as input.")

    def _step_targets(self, y: Any, n_samples: int, n_timesteps: int,
                      lengths: np.ndarray | None) -> np.ndarray:
        """Per-step targets (output="sequence") -> their valid steps stacked, (sum(lengths), ...).

        ``y`` is an array (n_samples, n_timesteps[, n_outputs]) or a list of one
        array (T_i[, n_outputs]) per sequence.
        """
        if lengths is None:
            lengths = np.full(n_samples, n_timesteps, dtype=np.intp)
        if isinstance(y, (list, tuple)):
            if len(y) != n_samples:
                raise ValueError(f"y has {len(y)} sequences of targets, but X has {n_samples}")
            parts = [np.asarray(item) for item in y]
            for index, (part, length) in enumerate(zip(parts, lengths)):
                if part.ndim not in (1, 2) or part.shape[0] != length or \
                        part.shape[1:] != parts[0].shape[1:]:
                    raise ValueError(
                        f"y[{index}] must have shape ({length},) or ({length}, n_outputs), like "
                        f"the others, to match sequence {index} of X, got shape {part.shape}")
            return np.concatenate(parts)
        y = np.asarray(y)
        if y.ndim not in (2, 3) or y.shape[:2] != (n_samples, n_timesteps):
            raise ValueError(
                f"with output='sequence', y must have shape ({n_samples}, {n_timesteps}) or "
                f"({n_samples}, {n_timesteps}, n_outputs), one target per step of X, or be a "
                f"list of per-sequence arrays; got shape {y.shape}")
        return y[_step_mask(lengths, n_timesteps)]

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

    def _logits(self, X: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """Head outputs by inference in chunks of sequences.

        (n, n_outputs) from the final states, or with output="sequence"
        (n, T, n_outputs) from every step (past a sequence's end: the head's
        intercept, which nothing reads).
        """
        lstm = self.lstm_
        D = lstm.num_directions
        coef = np.ascontiguousarray(self.head_coef_, lstm.dtype)
        intercept = self.head_intercept_
        per_step = self.output == "sequence"
        shape = (X.shape[0], X.shape[1]) if per_step else (X.shape[0],)
        logits = np.empty(shape + (self._n_head_outputs,), lstm.dtype)
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            rows = slice(start, start + _PREDICT_CHUNK)
            out, (h_n, _) = lstm(X[rows], lengths=None if lengths is None else lengths[rows])
            features = out if per_step else _last_states(h_n, D)
            # a sample's prediction must not depend on the others in the call
            _kernel.matmul_rows(features.reshape(-1, coef.shape[0]), coef,
                                logits[rows].reshape(-1, coef.shape[1]))
            logits[rows] += intercept
        return logits

    def _valid_steps(self, values: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """(n, T, ...) per-step values -> (sum(lengths), ...) valid ones; unchanged for output="last"."""
        if self.output != "sequence":
            return values
        if lengths is None:
            return values.reshape((-1,) + values.shape[2:])
        return values[_step_mask(lengths, values.shape[1])]

    def _step_weights(self, weights: np.ndarray, n_timesteps: int,
                      lengths: np.ndarray | None) -> np.ndarray:
        """Per-sequence weights -> one per valid step (output="sequence"); unchanged otherwise."""
        if self.output != "sequence":
            return weights
        steps = np.broadcast_to(weights[:, np.newaxis], (weights.shape[0], n_timesteps))
        return self._valid_steps(steps, lengths)

    def _make_optimizer(self, dtype: np.dtype):
        sizes = [p.size for p in self._params()]
        if self.solver == "sgd":
            return SGD(sizes, dtype, self.learning_rate_init, self.learning_rate,
                       self.momentum, self.nesterovs_momentum, self.power_t)
        return Adam(sizes, dtype, self.learning_rate_init, self.beta_1, self.beta_2,
                    self.epsilon)

    # ------------------------------------------------------------------ one step
    def _batch_gradients(self, X: np.ndarray, lengths: np.ndarray | None, targets: np.ndarray,
                         weights: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Loss and flat gradients [LSTM, head] of one mini-batch (includes the L2 term).

        The loss is the weighted mean over sequences (output="last") or over
        their valid steps, each step weighted by its sequence (output="sequence").
        """
        lstm = self.lstm_
        D, P = lstm.num_directions, lstm.output_size
        out, (h_n, c_n), cache = lstm.forward_train(X, lengths=lengths, rng=self._rng)
        per_step = self.output == "sequence"
        if per_step:
            features = self._valid_steps(out, lengths)                   # (steps, D*P)
            targets = self._valid_steps(targets, lengths)
            step_weights = self._step_weights(weights, X.shape[1], lengths)
        else:
            features = _last_states(h_n, D)                              # (B, D*P)
            step_weights = weights
        coef, intercept = self.head_coef_, self.head_intercept_
        logits = features @ coef + intercept                              # (rows, n_out)
        step_sum = float(step_weights.sum())
        loss, d_logits = self._loss_gradient(logits, targets,
                                             step_weights / step_weights.dtype.type(step_sum))
        grad_head = np.empty_like(self._head)
        n_coef = coef.size
        np.matmul(features.T, d_logits, out=grad_head[:n_coef].reshape(coef.shape))
        grad_head[n_coef:] = d_logits.sum(axis=0)
        d_features = d_logits @ coef.T                                    # (rows, D*P)
        batch = X.shape[0]
        if per_step:
            d_out = np.zeros_like(out)
            if lengths is None:
                d_out.reshape(-1, D * P)[...] = d_features
            else:
                d_out[_step_mask(lengths, X.shape[1])] = d_features
            gradients = lstm.backward(cache, grad_output=d_out, input_grad=False)
        else:
            d_h_n = np.zeros_like(h_n)
            d_h_n[-D:] = d_features.reshape(batch, D, P).transpose(1, 0, 2)
            gradients = lstm.backward(cache, grad_state=(d_h_n, np.zeros_like(c_n)),
                                      input_grad=False)
        grads = [gradients.flat, grad_head]
        if self.alpha:
            # scaled by the batch's sequence weight, as MLP's by its sample count
            scale = self.alpha / float(weights.sum())
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
        X, lengths = self._convert_X(X, reset=first_pass, dtype=dtype)
        sample_weight = _check_sample_weight(sample_weight, X, dtype=dtype)
        if self.output == "sequence":
            # encode the valid steps' targets as one flat set, then pad them like X
            step_y = self._step_targets(y, X.shape[0], X.shape[1], lengths)
            flat, n_outputs = self._encode_targets(step_y, step_y, dtype, first_pass,
                                                   incremental, classes)
            if lengths is None:
                targets = flat.reshape(X.shape[:2] + flat.shape[1:])
            else:
                targets = np.zeros(X.shape[:2] + flat.shape[1:], flat.dtype)
                targets[_step_mask(lengths, X.shape[1])] = flat
            init_targets = flat
            init_weights = self._step_weights(sample_weight, X.shape[1], lengths)
        else:
            targets, n_outputs = self._encode_targets(y, X, dtype, first_pass, incremental,
                                                      classes)
            init_targets, init_weights = targets, sample_weight
        if first_pass or not hasattr(self, "_rng"):
            # (a model file holds no training state: a loaded estimator that goes
            # on training starts a fresh random stream and optimizer)
            self._rng = np.random.default_rng(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if first_pass:
            self._initialize(X.shape[2], n_outputs, dtype, init_targets, init_weights)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer(dtype)
        try:
            self._fit_stochastic(X, lengths, targets, sample_weight, incremental)
        finally:
            # training reused its work buffers from step to step; a fitted model keeps none
            self.lstm_._release_training_buffers()
        return self

    def _fit_stochastic(self, X: np.ndarray, lengths: np.ndarray | None, targets: np.ndarray,
                        sample_weight: np.ndarray, incremental: bool) -> None:
        name = type(self).__name__
        early_stopping = self.early_stopping
        lengths_val = None
        if early_stopping:
            stratify = targets if self._stratify and self.output == "last" else None
            arrays = [X, targets, sample_weight] + ([] if lengths is None else [lengths])
            split = train_test_split(
                *arrays, test_size=self.validation_fraction, stratify=stratify,
                random_state=int(self._rng.integers(np.iinfo(np.int32).max)))
            X, X_val, targets, targets_val, sample_weight, weight_val = split[:6]
            if lengths is not None:
                lengths, lengths_val = split[6:]
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
        params = self._params()
        optimizer = self._optimizer
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                epoch_start = last_report = time.perf_counter()
                batches = self._epoch_batches(n_samples, batch_size, lengths)
                accumulated_loss = 0.0
                seen = 0
                for batch_index, rows in enumerate(batches):
                    X_batch, targets_batch, lengths_batch = X[rows], targets[rows], None
                    if lengths is not None:
                        # trimmed to the batch's longest sequence: the rest is padding
                        lengths_batch = lengths[rows]
                        steps = int(lengths_batch.max())
                        X_batch = np.ascontiguousarray(X_batch[:, :steps])
                        if self.output == "sequence":
                            targets_batch = targets_batch[:, :steps]
                    loss, grads = self._batch_gradients(X_batch, lengths_batch, targets_batch,
                                                        sample_weight[rows])
                    norm = math.sqrt(sum(float(np.dot(g, g)) for g in grads))
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        self._diverged(loss, norm)
                    if self.clip_norm is not None and norm > self.clip_norm:
                        for grad in grads:
                            grad *= grad.dtype.type(self.clip_norm / norm)
                    optimizer.step(params, grads)
                    accumulated_loss += loss * X_batch.shape[0]
                    seen += X_batch.shape[0]
                    if self.verbose and time.perf_counter() - last_report > _PROGRESS_SECONDS:
                        last_report = time.perf_counter()
                        print(f"Epoch {self.n_iter_ + 1}: batch {batch_index + 1}/"
                              f"{len(batches)}, running loss = {accumulated_loss / seen:.6f}",
                              flush=True)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if early_stopping:
                    score = self._validation_score(X_val, lengths_val, targets_val, weight_val)
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

    def _epoch_batches(self, n_samples: int, batch_size: int, lengths: np.ndarray | None
                       ) -> list[Any]:
        """One epoch's mini-batches: row slices in order, shuffled rows, or (ragged X and
        shuffle) shuffled batches of sequences of similar length."""
        if not self.shuffle:
            return [slice(start, start + batch_size) for start in range(0, n_samples, batch_size)]
        if lengths is not None:
            return bucket_batches(lengths, batch_size, self._rng)
        order = self._rng.permutation(n_samples)
        return [order[start:start + batch_size] for start in range(0, n_samples, batch_size)]

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
    def fit(self: _Estimator, X: Any, y: Any, sample_weight: Any = None) -> _Estimator:
        """Fit the model to sequences X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps), \
or list of array-like of shape (T_i, n_features) or (T_i,)
            Sequences; 2-D X is a batch of univariate series; a list holds
            sequences of any lengths T_i >= 1.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier) or real targets (regressor). With
            ``output="sequence"``, one per step: shape (n_samples, n_timesteps)
            or (n_samples, n_timesteps, n_outputs), or a list of arrays
            (T_i,) or (T_i, n_outputs), one per sequence.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples (sequences) in the loss.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _predict_checked(self, X: Any) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Head outputs of X (see ``_logits``), its lengths, and whether X was a list of sequences."""
        check_is_fitted(self)
        as_list = _sequence_list(X) is not None
        X, lengths = self._convert_X(X, reset=False, dtype=self.lstm_.dtype)
        return self._logits(X, lengths), lengths, as_list

    def _per_sequence(self, values: np.ndarray, lengths: np.ndarray | None, as_list: bool) -> Any:
        """Per-step predictions of a list of sequences back to a list of (T_i, ...) arrays."""
        if self.output == "sequence" and as_list:
            return unpad(values, lengths)
        return values

    def _sequence_score(self, metric: Any, X: Any, y: Any, sample_weight: Any) -> float:
        """``metric`` over every valid step (output="sequence"), steps weighted by their sequence."""
        check_is_fitted(self)
        X, lengths = self._convert_X(X, reset=False, dtype=self.lstm_.dtype)
        step_y = self._step_targets(y, X.shape[0], X.shape[1], lengths)
        predicted = self._predictions(self._valid_steps(self._logits(X, lengths), lengths))
        if sample_weight is not None:
            sample_weight = self._step_weights(
                _check_sample_weight(sample_weight, X), X.shape[1], lengths)
        return float(metric(step_y, predicted, sample_weight=sample_weight))


class LSTMClassifier(ClassifierMixin, _BaseLSTM):
    """Sequence classifier: an LSTM stack and a softmax head on its last time step.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` where the
    concept is the same.

    Parameters
    ----------
    hidden_size : int, default=64
        Memory cells per layer and direction.
    output : {"last", "sequence"}, default="last"
        "last": one label per sequence, from its final state. "sequence": one
        label per time step (tagging), from each step's output; y then holds
        one label per step, and the loss ignores steps past each sequence's end.
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
        Shuffle the samples every epoch; for a list of sequences of different
        lengths, batches then group sequences of similar length, each padded
        only to its own longest.
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

    def _validation_score(self, X, lengths, labels, weights):
        predicted = self._valid_steps(self._logits(X, lengths), lengths).argmax(axis=1)
        return accuracy_score(self._valid_steps(labels, lengths), predicted,
                              sample_weight=self._step_weights(weights, X.shape[1], lengths))

    def _predictions(self, logits):
        return self.classes_[logits.argmax(axis=-1)]

    def partial_fit(self, X: Any, y: Any, classes: Any = None,
                    sample_weight: Any = None) -> LSTMClassifier:
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

    def predict_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``.

        With ``output="sequence"``: shape (n_samples, n_timesteps, n_classes), or
        a list of (T_i, n_classes) arrays when X is a list of sequences.
        """
        logits, lengths, as_list = self._predict_checked(X)
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)
        return self._per_sequence(logits, lengths, as_list)

    def predict_log_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Logarithm of :meth:`predict_proba`."""
        proba = self.predict_proba(X)
        return [np.log(item) for item in proba] if isinstance(proba, list) else np.log(proba)

    def predict(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Most probable class of each sequence, shape (n_samples,).

        With ``output="sequence"``: of each step, shape (n_samples, n_timesteps),
        or a list of (T_i,) arrays when X is a list of sequences.
        """
        logits, lengths, as_list = self._predict_checked(X)
        return self._per_sequence(self._predictions(logits), lengths, as_list)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy; over every valid step with ``output="sequence"``."""
        if self.output == "sequence":
            return self._sequence_score(accuracy_score, X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)


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

    def _validation_score(self, X, lengths, targets, weights):
        return r2_score(self._valid_steps(targets, lengths),
                        self._valid_steps(self._logits(X, lengths), lengths),
                        sample_weight=self._step_weights(weights, X.shape[1], lengths))

    def _predictions(self, logits):
        predictions = logits.astype(np.float64)
        return predictions[..., 0] if self.n_outputs_ == 1 else predictions

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> LSTMRegressor:
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

    def predict(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Predicted targets, shape (n_samples,) or (n_samples, n_outputs).

        With ``output="sequence"``: one per step, shape (n_samples, n_timesteps)
        or (n_samples, n_timesteps, n_outputs), or a list of (T_i,) or
        (T_i, n_outputs) arrays when X is a list of sequences.
        """
        logits, lengths, as_list = self._predict_checked(X)
        return self._per_sequence(self._predictions(logits), lengths, as_list)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R² (scikit-learn's ``r2_score``); over every valid step with ``output="sequence"``."""
        if self.output == "sequence":
            return self._sequence_score(r2_score, X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)


def _last_states(h_n: np.ndarray, num_directions: int) -> np.ndarray:
    """(L*D, B, P) final states -> (B, D*P): the top layer's directions side by side."""
    top = h_n[-num_directions:]
    return np.ascontiguousarray(top.transpose(1, 0, 2)).reshape(top.shape[1], -1)


def _step_mask(lengths: np.ndarray | None, n_timesteps: int) -> Any:
    """(n, T) boolean mask of the valid steps; a full slice when every sequence is full."""
    if lengths is None:
        return slice(None)
    return np.arange(n_timesteps) < lengths[:, np.newaxis]


def _sequence_list(X: Any) -> list | tuple | None:
    """X if it is a list (or tuple) of sequences to pad, else None (an array-like for sklearn).

    That is a list holding NumPy arrays, or items of different shapes (which
    ``check_array`` refuses); an empty list is an error, not an empty batch.
    """
    if not isinstance(X, (list, tuple)):
        return None
    if len(X) == 0:
        raise ValueError("X is an empty list: expected at least one sequence")
    if any(isinstance(item, np.ndarray) for item in X):
        return X
    try:
        shapes = {np.shape(item) for item in X}
    except ValueError:  # an item that is itself ragged: reported by the padding
        return X
    if len(shapes) > 1 or any(shape[:1] == (0,) for shape in shapes):
        return X
    return None
