"""Input checks shared by the layer and the estimators.

Compiled code validates nothing: everything that reaches the kernel passes
through here first. Messages say what was expected and what was given.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._kernel import all_finite

# BLAS takes 32-bit sizes; every dimension and leading dimension must fit.
_BLAS_MAX = 2**31 - 1


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


_MEMORY = _physical_memory()


def _format_bytes(n_bytes: float) -> str:
    unit = "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n_bytes < 1024 or unit == "EiB":
            break
        n_bytes /= 1024
    return f"{n_bytes:.3g} {unit}"


def check_memory(n_bytes: int, what: str) -> None:
    """Raise ValueError, before allocating, if ``what`` needs more bytes than this machine has.

    Past physical memory an allocation either fails or, with overcommit,
    succeeds and gets the process killed when the pages are touched; a clear
    error up front is better than both.
    """
    if _MEMORY is not None and n_bytes > _MEMORY:
        raise ValueError(f"{what} would need {_format_bytes(n_bytes)}, more than this "
                         f"machine's {_format_bytes(_MEMORY)} of memory")


def resolve_dtype(dtype: Any) -> np.dtype:
    """Return float32 or float64 for a dtype spec, or raise TypeError."""
    if dtype is None:  # np.dtype(None) would silently mean float64
        raise TypeError("dtype must be float32 or float64, got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {resolved}")
    return resolved


def as_float_array(value: Any, name: str, dtype: np.dtype, ndim: int | None = None,
                   dims: str | None = None) -> np.ndarray:
    """Convert ``value`` once to an aligned, C-contiguous array of ``dtype`` and check it.

    Accepts anything ``np.asarray`` understands (lists, memmaps, read-only or
    strided arrays, torch tensors). Rejects object, complex, string and other
    non-numeric data with TypeError, a wrong ndim with ValueError,
    non-finite values with ValueError, and arrays whose converted copy would
    not fit in memory with ValueError (before allocating it: a broadcast view
    can describe terabytes).

    Unaligned data (a buffer at an odd offset, as deserialized arrays and
    packed record fields have) is copied: C code may assume a float is on a
    4-byte boundary, and reading it elsewhere is undefined behaviour.
    """
    if type(value) is np.ndarray and value.dtype == dtype and value.ndim == ndim \
            and value.flags.c_contiguous and value.flags.aligned:
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
    itemsize = np.dtype(dtype).itemsize
    narrowing = kind == "f" and array.dtype.itemsize > itemsize and array.size
    needs_copy = (array.dtype != dtype or not array.flags.c_contiguous
                  or not array.flags.aligned)
    # the copy, plus np.isfinite's boolean temporary when narrowing
    check_memory(array.size * (itemsize * needs_copy + bool(narrowing)),
                 f"{name} of shape {array.shape} as {np.dtype(dtype).name}")
    if narrowing:
        # Values beyond float32's range would silently become inf.
        finite_before = np.isfinite(array).all()
        with np.errstate(over="ignore"):  # overflow is reported below, as a ValueError
            converted = np.require(array, dtype, ("C", "A"))
        if finite_before and not np.isfinite(converted).all():
            raise ValueError(
                f"{name} has values too large for {np.dtype(dtype).name} "
                f"(max abs {np.abs(array).max():.3g})")
    else:
        converted = np.require(array, dtype, ("C", "A"))
    if converted.size and not all_finite(converted.reshape(-1)):
        raise ValueError(f"{name} must be finite, but contains NaN or infinity")
    return converted


def check_lengths(lengths: Any, batch: int, time: int) -> np.ndarray | None:
    """Validate per-sequence lengths: integers in [1, time], one per sequence."""
    if lengths is None:
        return None
    try:
        array = np.asarray(lengths)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"lengths could not be converted to an array: {exc}") from exc
    kind = array.dtype.kind
    if kind not in "iuf":  # not bool either: True is no length
        raise TypeError(f"lengths must be integers, got dtype {array.dtype}")
    if array.ndim != 1 or array.shape[0] != batch:
        raise ValueError(
            f"lengths must have shape ({batch},) (one per sequence), got shape {array.shape}")
    if kind == "f" and not (np.all(np.isfinite(array)) and np.all(array == np.round(array))):
        raise TypeError(f"lengths must be integers, got dtype {array.dtype} with "
                        f"non-integral or non-finite values")
    # The range is checked before any cast: a float 1e20 must not wrap around.
    if batch and (array.min() < 1 or array.max() > time):
        raise ValueError(
            f"lengths must lie in [1, {time}] (the time dimension of x), "
            f"got min {array.min()} and max {array.max()}")
    return array.astype(np.intp)


def check_blas_size(*dims: int, what: str | None = None) -> None:
    """Raise before allocating if a size would overflow BLAS's 32-bit integers.

    ``what`` names the quantity in the message (e.g. "batch * time"); without
    it the message suggests splitting the input, the usual remedy.
    """
    for dim in dims:
        if dim > _BLAS_MAX:
            remedy = "split the batch or the sequence" if what is None else f"reduce {what}"
            raise ValueError(
                f"size {dim} exceeds the 2**31 - 1 limit of BLAS's 32-bit dimensions; "
                f"{remedy}")
