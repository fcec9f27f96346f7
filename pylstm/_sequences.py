"""Variable-length sequences and supervised windows, NumPy only.

* :func:`pad_sequences` stacks a list of sequences ``(T_i, n_features)`` (or
  ``(T_i,)`` for univariate series) into one zero-padded array
  ``(n, max T_i, n_features)`` plus their ``lengths``, the layer's argument of
  that name; :func:`unpad` takes a padded per-step result back to a list.
* :func:`make_windows` cuts a series into (lookback window, next ``horizon``
  values) pairs, the supervised arrays a forecaster trains on.

Padding goes after each sequence (post-padding): with ``lengths`` the layer
never reads it, so its values do not matter.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["pad_sequences", "unpad", "make_windows"]


def _as_sequences(seqs: Any, name: str = "seqs") -> list[np.ndarray]:
    """Each element of ``seqs`` as a 2-D (T_i, n_features) array, all checked (no dtype change)."""
    if isinstance(seqs, np.ndarray) or not isinstance(seqs, Sequence) or isinstance(seqs, str):
        raise ValueError(f"{name} must be a list of arrays of shape (T_i, n_features) or (T_i,), "
                         f"got {type(seqs).__name__}")
    if len(seqs) == 0:
        raise ValueError(f"{name} is empty: expected at least one sequence")
    arrays = []
    n_features = None
    for index, seq in enumerate(seqs):
        try:
            array = np.asarray(seq)
        except Exception as exc:  # e.g. a ragged nested list as one sequence
            raise ValueError(f"{name}[{index}] could not be converted to an array: {exc}") from exc
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name}[{index}] must hold real numbers, got dtype {array.dtype}")
        if array.ndim == 1:
            array = array[:, np.newaxis]
        elif array.ndim != 2:
            raise ValueError(f"{name}[{index}] must have shape (T_i, n_features) or (T_i,), "
                             f"got shape {array.shape}")
        if array.shape[0] == 0:
            raise ValueError(f"{name}[{index}] has length 0: every sequence needs at least "
                             f"one time step")
        if n_features is None:
            n_features = array.shape[1]
        elif array.shape[1] != n_features:
            raise ValueError(f"{name}[{index}] has {array.shape[1]} features per step, but "
                             f"{name}[0] has {n_features}: all sequences need the same number")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{name}[{index}] must be finite, but contains NaN or infinity")
        arrays.append(array)
    return arrays


def pad_sequences(seqs: Sequence[Any], dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack sequences of different lengths into one zero-padded batch.

    Parameters
    ----------
    seqs : list of array-like of shape (T_i, n_features) or (T_i,)
        At least one sequence; every ``T_i >= 1``, the same ``n_features``
        throughout; 1-D sequences are univariate (``n_features = 1``).
    dtype : dtype, default=None
        Of the result; None gives the sequences' common float type (float64
        for integers).

    Returns
    -------
    X : ndarray of shape (n, max(T_i), n_features)
        Sequence i in ``X[i, :T_i]``, zeros after it.
    lengths : ndarray of int of shape (n,)
        ``T_i``: pass it as the layer's ``lengths``.

    Raises
    ------
    ValueError
        For an empty list, a zero-length sequence, sequences with different
        feature counts, more than 2 dimensions, or NaN/infinity.
    """
    arrays = _as_sequences(seqs)
    if dtype is None:
        dtype = np.result_type(np.float16, *(array.dtype for array in arrays))
        if dtype.itemsize < 4:
            dtype = np.dtype(np.float64)
    lengths = np.array([array.shape[0] for array in arrays], dtype=np.intp)
    X = np.zeros((len(arrays), int(lengths.max()), arrays[0].shape[1]), dtype)
    for row, array in enumerate(arrays):
        X[row, :array.shape[0]] = array
    return X, lengths


def unpad(out: Any, lengths: Any) -> list[np.ndarray]:
    """The inverse of :func:`pad_sequences` for per-step results: ``[out[i, :lengths[i]]]``.

    Parameters
    ----------
    out : array-like of shape (n, T, ...)
    lengths : array-like of int of shape (n,), each in [0, T]

    Returns
    -------
    list of ndarray
        n views ``out[i, :lengths[i]]``.
    """
    out = np.asarray(out)
    lengths = np.asarray(lengths)
    if out.ndim < 2:
        raise ValueError(f"out must have at least 2 dimensions (n, T, ...), got shape {out.shape}")
    if lengths.dtype.kind not in "iu" or lengths.shape != (out.shape[0],):
        raise ValueError(f"lengths must be integers of shape ({out.shape[0]},), got "
                         f"{lengths.dtype} of shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > out.shape[1]):
        raise ValueError(f"lengths must lie in [0, {out.shape[1]}], got min {lengths.min()} "
                         f"and max {lengths.max()}")
    return [out[row, :int(length)] for row, length in enumerate(lengths)]


def make_windows(series: Any, lookback: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Supervised pairs from a series: each ``lookback`` window and the ``horizon`` values after it.

    Parameters
    ----------
    series : array-like of shape (T,) or (T, n_series)
        Time along axis 0; several columns are aligned series.
    lookback : int
        Steps in each input window.
    horizon : int, default=1
        Steps to predict after each window.

    Returns
    -------
    X : ndarray of shape (n_windows, lookback) or (n_windows, lookback, n_series)
    Y : ndarray of shape (n_windows, horizon) or (n_windows, horizon, n_series)
        ``n_windows = T - lookback - horizon + 1``; window w is
        ``series[w:w + lookback]`` and its target ``series[w + lookback:w + lookback + horizon]``.
        Both are copies, C-contiguous.

    Raises
    ------
    ValueError
        If the series is shorter than ``lookback + horizon``, not 1-D or
        2-D, or holds NaN or infinity.
    """
    series = np.asarray(series)
    if series.dtype.kind not in "biuf":
        raise ValueError(f"series must hold real numbers, got dtype {series.dtype}")
    if series.ndim not in (1, 2):
        raise ValueError(f"series must have shape (T,) or (T, n_series), got shape {series.shape}")
    for name, value in (("lookback", lookback), ("horizon", horizon)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if series.shape[0] < lookback + horizon:
        raise ValueError(f"the series has {series.shape[0]} time steps, but lookback={lookback} "
                         f"and horizon={horizon} need at least {lookback + horizon}")
    if series.dtype.kind == "f" and not np.isfinite(series).all():
        raise ValueError("series must be finite, but contains NaN or infinity")
    n_windows = series.shape[0] - lookback - horizon + 1
    # windows over time (axis 0): shape (n_windows + horizon, [n_series,] lookback) -> time second
    view = np.lib.stride_tricks.sliding_window_view(series, lookback, axis=0)
    X = np.moveaxis(view[:n_windows], -1, 1)
    view = np.lib.stride_tricks.sliding_window_view(series[lookback:], horizon, axis=0)
    Y = np.moveaxis(view[:n_windows], -1, 1)
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   chunk_batches: int = 50) -> list[np.ndarray]:
    """Shuffled mini-batches of rows whose lengths are close.

    Rows are permuted at random, cut into chunks of ``chunk_batches`` batches,
    sorted by length within each chunk and split into batches; the batch order
    is then shuffled. Sorting only within a chunk keeps the batches random
    across epochs while each batch's longest sequence stays close to its
    others, so padding (``len(batch) * max length`` vs the sum of lengths)
    stays small.
    """
    order = rng.permutation(lengths.shape[0])
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, order.shape[0], chunk):
        rows = order[start:start + chunk]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches.extend(rows[i:i + batch_size] for i in range(0, rows.shape[0], batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_steps(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    """Time steps the batches hold once each is padded to its own longest sequence."""
    return int(sum(rows.shape[0] * lengths[rows].max() for rows in batches))
