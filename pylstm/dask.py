"""pylstm on Dask: batch inference and out-of-core training of the estimators.

Needs ``pip install "pylstm[dask]"``; ``import pylstm`` never imports this
module, nor Dask.

* :func:`predict` and :func:`predict_proba` take a ``dask.array`` of sequences
  chunked along samples (``(n, T, F)``, or ``(n, T)`` univariate series) and
  return a lazy ``dask.array`` of predictions, identical to the in-memory
  method's. Given a ``dask.bag`` of sequences (arrays ``(T_i, F)``, lengths
  may differ), they return a ``dask.bag`` with one prediction per sequence.
  With a ``dask.distributed`` client the fitted model is scattered to every
  worker once, and each block's task refers to that one copy.
* :func:`fit` trains an estimator on a ``dask.array`` through ``partial_fit``,
  one chunk at a time, visiting the chunks in a shuffled order each epoch: the
  calling process holds at most two chunks (the one being trained on and the
  next, fetched meanwhile), never the whole array.

Hyperparameter searches need nothing from here: scikit-learn's searches run on
a Dask cluster through joblib's Dask backend (see ``docs/dask.md``)::

    with joblib.parallel_config(backend="dask"):
        GridSearchCV(LSTMClassifier(), grid).fit(X, y)
"""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    import dask.bag as db
except ImportError as exc:  # say which extra brings it
    raise ImportError(f"pylstm.dask needs Dask: pip install 'pylstm[dask]' ({exc})") from exc
from sklearn.base import is_classifier
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["fit", "predict", "predict_proba"]


# ---------------------------------------------------------------- inference
def predict(model: Any, X: Any, *, client: Any = None) -> Any:
    """Predictions of a fitted estimator for a Dask collection of sequences.

    Parameters
    ----------
    model : fitted LSTMClassifier, LSTMRegressor, or a Pipeline ending in one
    X : dask.array.Array of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps)
        Chunked along samples (other axes are merged into one chunk if they
        are not already); or a dask.bag.Bag whose elements are sequences,
        arrays of shape (n_timesteps_i, n_features) or (n_timesteps_i,) of
        any lengths; each partition is predicted as one list of sequences.
    client : distributed.Client, optional
        Where to scatter the model; default: the current default client if
        there is one. Without a client the model is one key of the task graph
        and the blocks run on Dask's local scheduler.

    Returns
    -------
    dask.array.Array chunked as X along samples, of the in-memory method's shape:
    (n_samples,) or (n_samples, n_outputs); with ``output="sequence"``,
    (n_samples, n_timesteps[, n_outputs]). For a bag: a dask.bag.Bag with
    one prediction per sequence, in order (an array (T_i[, n_outputs]) per
    sequence with ``output="sequence"``).
    """
    return _apply(model, X, "predict", client)


def predict_proba(model: Any, X: Any, *, client: Any = None) -> Any:
    """Class probabilities, ``(n_samples, n_classes)``, for a Dask collection of sequences.

    As :func:`predict`, for a fitted classifier; a bag gives one row of
    probabilities per sequence.
    """
    return _apply(model, X, "predict_proba", client)


def _apply(model: Any, X: Any, method: str, client: Any) -> Any:
    if not hasattr(model, method):
        raise TypeError(f"model must be a fitted estimator with a {method} method, got "
                        f"{type(model).__name__}")
    check_is_fitted(model)
    if isinstance(X, db.Bag):
        return X.map_partitions(_apply_partition, _share(model, client), method)
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array or a dask.bag.Bag, got "
                        f"{type(X).__name__}; for data in memory call model.{method}(X)")
    if X.ndim not in (2, 3):
        raise ValueError(f"X must have 2 dimensions (n_samples, n_timesteps) or 3 "
                         f"(n_samples, n_timesteps, n_features), got shape {X.shape}")
    if any(n_blocks > 1 for n_blocks in X.numblocks[1:]):
        # a task must see whole sequences: only the sample axis may be split
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    row_shape, dtype = _output_row(model, X, method)
    out_ndim = 1 + len(row_shape)
    return da.map_blocks(
        _apply_block, X, _share(model, client), method, row_shape, dtype,
        chunks=(X.chunks[0],) + tuple((size,) for size in row_shape),
        drop_axis=list(range(out_ndim, X.ndim)) or None,
        new_axis=list(range(X.ndim, out_ndim)) or None,
        dtype=dtype, meta=np.empty((0,) * out_ndim, dtype))


def _output_row(model: Any, X: Any, method: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape of one sample's output (the axes after the sample axis) and its dtype."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model  # a Pipeline's estimator
    # output="sequence": one prediction per time step
    steps = (X.shape[1],) if getattr(final, "output", "last") == "sequence" else ()
    if method == "predict_proba":
        return steps + (len(model.classes_),), np.dtype(np.float64)
    if is_classifier(final):
        return steps, np.asarray(model.classes_).dtype
    n_outputs = getattr(final, "n_outputs_", 1)
    return steps + ((n_outputs,) if n_outputs > 1 else ()), np.dtype(np.float64)


def _share(model: Any, client: Any) -> Any:
    """One reference to the model for every task: a future on all workers, or one graph key."""
    if client is None:
        client = _default_client()
    if client is None:
        # local schedulers share memory: one literal key, read by every task
        return dask.delayed(model, name=f"pylstm-model-{uuid.uuid4().hex}")
    # A copy on every worker up front (broadcast), once per worker, whatever
    # the number of blocks; the graph's tasks hold only the future's key.
    # (The Active Memory Manager drops copies no waiting task needs: computed
    # more than a cycle later, a worker that lost its copy fetches it once more
    # for its first task; still per worker, never per task.)
    # hash=False: no pickling just to name it, and a refitted model never
    # collides with a stale key.
    [future] = client.scatter([model], broadcast=True, hash=False)
    return future


def _default_client() -> Any:
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _apply_block(block: np.ndarray, model: Any, method: str, row_shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    """One task: ``model.method(block)``; an empty block gives an empty result."""
    if block.shape[0] == 0:  # the estimators refuse empty input; a chunk may be empty
        return np.empty((0,) + row_shape, dtype)
    return getattr(model, method)(block)


def _apply_partition(sequences: Any, model: Any, method: str) -> list:
    """One bag partition: the method on its sequences as one batch, one result each."""
    sequences = list(sequences)
    if not sequences:
        return []
    return list(getattr(model, method)(sequences))


# ---------------------------------------------------------------- training
def fit(estimator: Any, X: Any, y: Any, *, epochs: int, classes: Any = None,
        sample_weight: Any = None, client: Any = None) -> Any:
    """Train ``estimator`` on a dask.array by ``partial_fit``, one chunk at a time.

    Each epoch visits every chunk of X once, in a new random order (in order
    when ``estimator.shuffle`` is False), and calls ``partial_fit`` on it;
    within a chunk, ``partial_fit`` shuffles and forms mini-batches of
    ``estimator.batch_size`` as ``fit`` does. The chunks are computed where
    the collection lives (the cluster's workers, with a client) and brought
    to this process one at a time, the next one while the current one trains;
    the whole array is never in memory here. As ``fit``, this starts from
    fresh weights, unless ``estimator.warm_start`` is True.

    Parameters
    ----------
    estimator : LSTMClassifier or LSTMRegressor
        Trained in place; ``early_stopping`` must be False (``partial_fit``
        has no validation split).
    X : dask.array.Array of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps)
        Chunked along samples; a chunk is the unit of streaming, so its size
        is the memory bound (a chunk's other axes are merged if split).
    y : dask.array.Array or array-like of shape (n_samples,) or (n_samples, n_outputs)
        Rechunked to X's chunks along samples.
    epochs : int
        Passes over X.
    classes : array-like, default=None
        A classifier's classes; found from y (one pass over y) when not given.
    sample_weight : dask.array.Array or array-like of shape (n_samples,), default=None
    client : distributed.Client, optional
        Computes the chunks; default: the current default client, if any,
        else Dask's default scheduler.

    Returns
    -------
    estimator
        Fitted. ``n_iter_`` is ``epochs``; ``loss_curve_`` has one entry per
        chunk visited (each ``partial_fit`` call adds one), ``loss_`` is the
        last chunk's loss.
    """
    if not hasattr(estimator, "partial_fit"):
        raise TypeError(f"estimator must have a partial_fit method, got "
                        f"{type(estimator).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, Integral) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if getattr(estimator, "early_stopping", False):
        raise ValueError("pylstm.dask.fit trains through partial_fit, which has no validation "
                         "split: set early_stopping=False")
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array, got {type(X).__name__}; for data in "
                        f"memory call estimator.fit(X, y)")
    if X.ndim not in (2, 3):
        raise ValueError(f"X must have 2 dimensions (n_samples, n_timesteps) or 3 "
                         f"(n_samples, n_timesteps, n_features), got shape {X.shape}")
    if any(n_blocks > 1 for n_blocks in X.numblocks[1:]):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    y = _align(y, X, "y")
    sample_weight = None if sample_weight is None else _align(sample_weight, X, "sample_weight")
    scheduler = client  # None: Dask's default (the default client, if there is one)

    if not estimator.warm_start and _is_fitted(estimator):
        # start over as fit does: the same parameter objects (not copies, as
        # clone would make), no fitted or training state
        fresh = type(estimator)(**estimator.get_params(deep=False))
        vars(estimator).clear()
        vars(estimator).update(vars(fresh))
    extra = {}
    if is_classifier(estimator):
        if classes is None:
            classes = getattr(estimator, "classes_", None)
        if classes is None:
            (classes,) = dask.compute(da.unique(y), scheduler=scheduler)
        extra["classes"] = classes

    # the chunk order's own stream, drawn from random_state as fit draws its
    # seed; t_ (samples seen) gives a warm start new orders, not the same again
    seed = check_random_state(estimator.random_state).randint(np.iinfo(np.int32).max)
    order_rng = np.random.default_rng([seed, int(getattr(estimator, "t_", 0))])
    n_chunks = X.numblocks[0]
    visits = [order_rng.permutation(n_chunks) if estimator.shuffle else np.arange(n_chunks)
              for _ in range(epochs)]
    visits = [int(index) for epoch in visits for index in epoch]

    def load(index: int) -> tuple:
        parts = (X.blocks[index], y.blocks[index])
        if sample_weight is not None:
            parts += (sample_weight.blocks[index],)
        return dask.compute(*parts, scheduler=scheduler)

    with ThreadPoolExecutor(max_workers=1) as prefetcher:
        pending = prefetcher.submit(load, visits[0])
        for step in range(len(visits)):
            chunk = pending.result()
            if step + 1 < len(visits):
                pending = prefetcher.submit(load, visits[step + 1])
            X_chunk, y_chunk = chunk[:2]
            if X_chunk.shape[0] == 0:
                continue
            weight = chunk[2] if sample_weight is not None else None
            estimator.partial_fit(X_chunk, y_chunk, sample_weight=weight, **extra)
            del chunk, X_chunk, y_chunk, weight
    estimator.n_iter_ = epochs
    return estimator


def _align(values: Any, X: Any, name: str) -> Any:
    """``values`` as a dask.array with X's chunks along samples and one chunk elsewhere."""
    unknown = any(np.isnan(size) for size in X.chunks[0])
    if not isinstance(values, da.Array):
        values = np.asarray(values)
        if values.ndim == 0 or (not unknown and values.shape[0] != X.shape[0]):
            raise ValueError(f"{name} must have one entry per sample of X ({X.shape[0]}), "
                             f"got shape {values.shape}")
        if unknown:
            raise ValueError(f"X has unknown chunk sizes, so {name} cannot be split like it; "
                             f"call X.compute_chunk_sizes() or pass {name} as a dask array "
                             f"with X's partitions")
        return da.from_array(values, chunks=(X.chunks[0],) + values.shape[1:])
    if values.ndim == 0:
        raise ValueError(f"{name} must have one entry per sample of X, got a scalar")
    whole_rows = {axis: -1 for axis in range(1, values.ndim)}
    unknown = unknown or any(np.isnan(size) for size in values.chunks[0])
    if values.chunks[0] == X.chunks[0] or (unknown and values.numblocks[0] == X.numblocks[0]):
        # the same partitions (e.g. both from one dataframe); partial_fit checks each
        # chunk's lengths agree
        return values.rechunk(whole_rows)
    if unknown:
        raise ValueError(f"{name} and X have different numbers of chunks along samples and "
                         f"unknown chunk sizes, so they cannot be aligned; call "
                         f"compute_chunk_sizes() on both")
    if values.shape[0] != X.shape[0]:
        raise ValueError(f"{name} must have one entry per sample of X ({X.shape[0]}), "
                         f"got shape {values.shape}")
    return values.rechunk((X.chunks[0],) + tuple((size,) for size in values.shape[1:]))


def _is_fitted(estimator: Any) -> bool:
    return any(name.endswith("_") and not name.startswith("__") for name in vars(estimator))
