"""Input checks shared by the layer and the estimators.

Compiled code validates nothing: everything that reaches the kernel passes
through here first. Messages say what was expected and what was given.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._kernel import all_finite

# BLAS takes 32-bit sizes; every dimension and leading dimension must fit.
_BLAS_MAX = 2**31 - 1


def resolve_dtype(dtype: Any) -> np.dtype:
    """Return float32 or float64 for a dtype spec, or raise TypeError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def as_float_array(value: Any, name: str, dtype: np.dtype, ndim: int | None = None,
                   dims: str | None = None) -> np.ndarray:
    """Convert ``value`` once to a C-contiguous array of ``dtype`` and check it.

    Accepts anything ``np.asarray`` understands (lists, memmaps, read-only or
    strided arrays, torch tensors). Rejects object, complex, string and other
    non-numeric data with TypeError, a wrong ndim with ValueError, and
    non-finite values with ValueError.
    """
    if type(value) is np.ndarray and value.dtype == dtype and value.ndim == ndim \
            and value.flags.c_contiguous:
        # fast path (streaming step() calls): nothing to convert
        if value.size and not all_finite(value.reshape(-1)):
            raise ValueError(f"{name} must be finite, but contains NaN or infinity")
        return value
    try:
        array = np.asarray(value)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    kind = array.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (bool, int or float), got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        what = f" {dims}" if dims else ""
        raise ValueError(
            f"{name} must have {ndim} dimensions{what}, got shape {array.shape}")
    if kind == "f" and array.dtype.itemsize > np.dtype(dtype).itemsize and array.size:
        # Values beyond float32's range would silently become inf.
        finite_before = np.isfinite(array).all()
        with np.errstate(over="ignore"):  # overflow is reported below, as a ValueError
            converted = np.ascontiguousarray(array, dtype=dtype)
        if finite_before and not np.isfinite(converted).all():
            raise ValueError(
                f"{name} has values too large for {np.dtype(dtype).name} "
                f"(max abs {np.abs(array).max():.3g})")
    else:
        converted = np.ascontiguousarray(array, dtype=dtype)
    if converted.size and not all_finite(converted.reshape(-1)):
        raise ValueError(f"{name} must be finite, but contains NaN or infinity")
    return converted


def check_lengths(lengths: Any, batch: int, time: int) -> np.ndarray | None:
    """Validate per-sequence lengths: integers in [1, time], one per sequence."""
    if lengths is None:
        return None
    array = np.asarray(lengths)
    if array.dtype.kind not in "iub":
        if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) \
                and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"lengths must be integers, got dtype {array.dtype}")
    if array.ndim != 1 or array.shape[0] != batch:
        raise ValueError(
            f"lengths must have shape ({batch},) (one per sequence), got shape {array.shape}")
    if batch and (array.min() < 1 or array.max() > time):
        raise ValueError(
            f"lengths must lie in [1, {time}] (the time dimension of x), "
            f"got min {array.min()} and max {array.max()}")
    return array.astype(np.intp)


def check_blas_size(*dims: int) -> None:
    """Raise before allocating if a size would overflow BLAS's 32-bit integers."""
    for dim in dims:
        if dim > _BLAS_MAX:
            raise ValueError(
                f"size {dim} exceeds the 2**31 - 1 limit of BLAS's 32-bit dimensions; "
                "split the batch or the sequence")
