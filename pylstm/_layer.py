"""``pylstm.LSTM``: torch.nn.LSTM's semantics and weight names, batch-first, on a compiled kernel.

The layer validates and converts its inputs once, sorts the batch into packed
order (see ``src/_kernel.pyx`` for the layouts), and calls the kernel once per
layer and direction; the time loop runs in compiled code without the GIL.
"""
from __future__ import annotations

import functools
import math
import sys
import threading
from numbers import Real
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from . import _kernel
from ._validation import (as_float_array, check_blas_size, check_lengths, check_memory,
                          resolve_dtype)

# Inference runs the input projection in chunks of at most this many packed
# rows (and at least _MIN_CHUNK_STEPS steps), so its memory does not grow with T
# while each chunk's GEMM stays large enough to run near BLAS's peak.
_CHUNK_ROWS = 2048
_MIN_CHUNK_STEPS = 8
# From this batch size on, the SIMD step also computes the input term, as
# long as its weight panels [w_hh | w_ih] stay in L2 from one step to the
# next: within this share of one core's L2 (1 MiB assumed if unknown).
_FUSE_MIN_BATCH = 4
_L2_BUDGET = _kernel.L2_BUDGET
# When even w_hh's panels do not stay in L2, every step reads them from L3
# anyway: fusing then pays while w_ih's panels are at most half of w_hh's, or
# from this batch size on.
_FUSE_MIN_BATCH_FROM_L3 = 48
# Buffers the kernel streams start on a cache line.
_empty = _kernel.aligned_empty

State = tuple[np.ndarray, np.ndarray]
_STATE_DIMS = "(num_layers * num_directions, batch, size)"


@dataclass
class Gradients:
    """Gradients returned by :meth:`LSTM.backward`.

    Attributes
    ----------
    input : ndarray of shape (batch, time, input_size), or None
        dL/dx; zero past each sequence's length. None when
        :meth:`LSTM.backward` was asked for ``input_grad=False``.
    state : tuple of ndarray
        (dL/dh0, dL/dc0), shapes (num_layers * num_directions, batch, P) and
        (num_layers * num_directions, batch, hidden_size).
    params : dict of str to ndarray
        dL/dparam under torch's parameter names; views into ``flat``.
    flat : ndarray of shape (n_parameters,)
        All parameter gradients in one vector, in the order of
        :meth:`LSTM.parameters` (handy for optimizers).
    """

    input: np.ndarray | None
    state: State
    params: dict[str, np.ndarray]
    flat: np.ndarray


@dataclass
class _Packing:
    """Batch order of a call: sequences sorted by decreasing length (see the kernel docstring)."""

    perm: np.ndarray          # (B,) sorted position -> sequence index
    batch_sizes: np.ndarray   # (T,) number of live sequences at each step
    offsets: np.ndarray       # (T + 1,) first packed row of each step
    lengths: np.ndarray | None

    @classmethod
    def build(cls, batch: int, time: int, lengths: np.ndarray | None) -> "_Packing":
        if lengths is None:
            return _full_packing(batch, time)
        perm = np.argsort(-lengths, kind="stable").astype(np.intp)
        # live at step t = number of sequences longer than t
        ended_by = np.cumsum(np.bincount(lengths, minlength=time + 1))[:time]
        batch_sizes = (batch - ended_by).astype(np.intp)
        offsets = np.zeros(time + 1, dtype=np.intp)
        np.cumsum(batch_sizes, out=offsets[1:])
        return cls(perm, batch_sizes, offsets, lengths)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def identity(self) -> bool:
        """Every sequence runs all steps, in its own place (perm is 0..B-1)."""
        return self.lengths is None


@functools.lru_cache(maxsize=32)
def _full_packing(batch: int, time: int) -> _Packing:
    """The packing of a batch without lengths, kept for a streaming caller's repeated shape."""
    arrays = (np.arange(batch, dtype=np.intp), np.full(time, batch, dtype=np.intp),
              np.arange(time + 1, dtype=np.intp) * batch)
    for array in arrays:
        array.flags.writeable = False  # shared between calls and threads
    return _Packing(*arrays, None)


@dataclass
class _TrainCache:
    """What :meth:`LSTM.backward` needs from :meth:`LSTM.forward_train`."""

    owner: "LSTM"
    shape: tuple[int, int]
    packing: _Packing
    packed_inputs: list[np.ndarray]               # per layer (N, I_k)
    gates: list[np.ndarray]                        # per layer-direction (N, 4H)
    hidden_prev: list[np.ndarray]                  # per layer-direction (N, P)
    cell_prev: list[np.ndarray]                    # per layer-direction (N, H)
    tanh_cell: list[np.ndarray]                    # per layer-direction (N, H)
    dropout_masks: list[np.ndarray]                # per layer below the top (B, T, D*P)
    level: int                                     # SIMD level of the forward pass
    params: dict[str, np.ndarray]                  # the parameters the forward pass used (a copy)
    used: bool = field(default=False)


class LSTM:
    """A multi-layer LSTM with torch.nn.LSTM's semantics, batch-first.

    Per step and layer, with gate order (i, f, g, o) as in torch::

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c = f * c + i * g
        h = o * tanh(c)            (then h = W_hr h when proj_size > 0)

    Parameters
    ----------
    input_size : int
        Number of features of each time step of the input.
    hidden_size : int
        Number of memory cells (H) per layer and direction.
    num_layers : int, default=1
        Number of stacked layers.
    bias : bool, default=True
        Whether the layer has the bias vectors ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    bidirectional : bool, default=False
        Run a second, reverse-time direction per layer and concatenate outputs.
    proj_size : int, default=0
        If > 0, project the hidden state to this size with ``weight_hr_l{k}`` (P).
    dropout : float, default=0.0
        Dropout probability on the outputs of every layer but the last, applied
        by :meth:`forward_train` only (never at inference).
    dtype : {np.float32, np.float64}, default=np.float32
        Precision of the weights and of all computation.
    random_state : int, numpy Generator or None, default=None
        Seeds the initial weights, U(-1/sqrt(H), 1/sqrt(H)) as torch, and the dropout masks.

    Notes
    -----
    Input is always batch-first, ``(batch, time, input_size)``. Outputs are
    ``out`` of shape ``(batch, time, D * P)`` and ``(h_n, c_n)`` of shapes
    ``(num_layers * D, batch, P)`` and ``(num_layers * D, batch, hidden_size)``,
    where D is 2 if bidirectional else 1 and P is ``proj_size or hidden_size``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, bidirectional: bool = False, proj_size: int = 0,
                 dropout: float = 0.0, dtype: Any = np.float32,
                 random_state: int | np.random.Generator | None = None) -> None:
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size, got proj_size={proj_size} "
                f"and hidden_size={hidden_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.dropout = float(dropout)
        self.dtype = resolve_dtype(dtype)
        check_blas_size(4 * self.hidden_size * max(self.input_size, self.hidden_size))
        self._rng = _as_generator(random_state)
        self._layout = list(self._parameter_shapes())
        n_parameters = sum(math.prod(s) for _, s in self._layout)
        # parameters, their gradients and an optimizer's two moments
        check_memory(4 * n_parameters * self.dtype.itemsize,
                     f"an LSTM with {n_parameters:,} parameters")
        self._flat = np.empty(n_parameters, dtype=self.dtype)
        self._params = _views(self._flat, self._layout)
        self._init_weight_cache()
        self.reset_parameters()

    # ------------------------------------------------------------------ weight cache
    # Inference reuses weights prepared for the kernel (packed SIMD panels,
    # GEMM operands packed once, summed biases, step plans). They are rebuilt
    # whenever the parameters may have changed: after any write through this
    # class, and for as long as any view of the parameters exists outside this
    # object. NumPy gives every view, and every view of a view, the flat vector
    # itself as its base, so the flat vector's reference count says whether
    # one is alive.
    def _init_weight_cache(self) -> None:
        self._version = 0
        self._cache: dict[Any, Any] = {}
        self._cache_version = -1
        self._flat_refs = sys.getrefcount(self._flat)  # this object's own references
        # The last consumed training cache's work buffers (gates, states, packed
        # inputs), for the next forward_train to reuse. Allocated afresh, ~10 MiB
        # per training step could go back to the OS and fault in again: up to ~850
        # page faults (~1 ms) per step at the estimators' shape (30, 200, 8, 64).
        self._spare_buffers: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._spare_lock = threading.Lock()

    def _take_spares(self) -> dict[tuple[int, ...], list[np.ndarray]]:
        """The spare training buffers, now the caller's alone (by shape)."""
        with self._spare_lock:
            spares, self._spare_buffers = self._spare_buffers, {}
        return spares

    def _work_buffer(self, spares: dict[tuple[int, ...], list[np.ndarray]],
                     shape: tuple[int, ...]) -> np.ndarray:
        """An aligned (uninitialised) buffer of ``shape``: a spare one if there is one."""
        same = spares.get(shape)
        return same.pop() if same else _empty(shape, self.dtype)

    def _give_spares(self, buffers: list[np.ndarray]) -> None:
        """Keep a consumed cache's buffers for the next forward_train (replacing older ones)."""
        spares: dict[tuple[int, ...], list[np.ndarray]] = {}
        for buffer in buffers:
            spares.setdefault(buffer.shape, []).append(buffer)
        with self._spare_lock:
            self._spare_buffers = spares

    def _release_training_buffers(self) -> None:
        """Drop the spare training buffers (the estimators call this at the end of fit)."""
        self._take_spares()

    def _params_changed(self) -> None:
        self._version += 1

    def _track(self, view: np.ndarray) -> np.ndarray:
        """Hand out a writable view: whatever the caller does with it, the cache is stale."""
        self._params_changed()
        return view

    def _cached(self, key: Any) -> Any:
        """The cache's value for ``key`` if it is still valid, else None."""
        if self._cache_version != self._version or sys.getrefcount(self._flat) > self._flat_refs:
            return None  # written since, or a view is alive (then nothing is cached)
        return self._cache.get(key)

    def _prepared(self, key: Any, build: Any, rebuild: bool = False) -> Any:
        """Kernel-ready weights for ``key``, from the cache when it is valid (and not ``rebuild``)."""
        value = None if rebuild else self._cached(key)
        if value is not None:
            return value
        value = build()
        if sys.getrefcount(self._flat) <= self._flat_refs:  # no view alive: cache it
            cache = self._cache if self._cache_version == self._version else {}
            cache = {**cache, key: value}  # replace, not mutate: readers may be in other threads
            self._cache, self._cache_version = cache, self._version
        return value

    # ------------------------------------------------------------------ shape facts
    @property
    def num_directions(self) -> int:
        """2 if bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of a hidden state, P: ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _widest_input(self) -> int:
        """The largest input size of any layer (D * P only feeds layers above the first)."""
        return max(self._layer_input_size(layer) for layer in range(self.num_layers))

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def _parameter_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Torch's parameter names and shapes, in torch's order."""
        H, P = self.hidden_size, self.output_size
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                yield f"weight_ih_{suffix}", (4 * H, self._layer_input_size(layer))
                yield f"weight_hh_{suffix}", (4 * H, P)
                if self.bias:
                    yield f"bias_ih_{suffix}", (4 * H,)
                    yield f"bias_hh_{suffix}", (4 * H,)
                if self.proj_size:
                    yield f"weight_hr_{suffix}", (P, H)

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), as torch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        self._flat[:] = self._rng.uniform(-bound, bound, size=self._flat.shape)
        self._params_changed()

    def parameters(self) -> dict[str, np.ndarray]:
        """Live, writable parameter arrays by torch name (views into :attr:`flat_parameters`)."""
        return {name: self._track(view) for name, view in _views(self._flat, self._layout).items()}

    @property
    def flat_parameters(self) -> np.ndarray:
        """All parameters as one live, writable vector, in the order of :meth:`parameters`."""
        return self._track(self._flat[:])

    @flat_parameters.setter
    def flat_parameters(self, value: Any) -> None:
        # In-place operators (lstm.flat_parameters -= step) land here after
        # updating the vector itself; plain assignment copies values in.
        self._params_changed()
        if isinstance(value, np.ndarray) and value.base is self._flat \
                and value.shape == self._flat.shape:
            return
        value = as_float_array(value, "flat_parameters", self.dtype, 1)
        if value.shape != self._flat.shape:
            raise ValueError(f"flat_parameters must have shape {self._flat.shape}, "
                             f"got {value.shape}")
        self._flat[...] = value

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under torch's names and shapes."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load parameters by torch name; values may be any array-like (torch tensors too).

        Raises ValueError for missing or unexpected names, wrong shapes or non-finite values.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name to array, "
                            f"got {type(state_dict).__name__}")
        missing = [name for name in self._params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._params]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match this LSTM: missing {missing}, "
                             f"unexpected {unexpected}")
        converted = {}
        for name, target in self._params.items():
            value = as_float_array(_to_numpy(state_dict[name]), name, self.dtype)
            if value.shape != target.shape:
                raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
            if np.shares_memory(value, self._flat):  # e.g. another parameter of this layer:
                value = value.copy()                 # it would be overwritten before it is read
            converted[name] = value
        for name, value in converted.items():
            self._params[name][...] = value
        self._params_changed()

    @classmethod
    def from_torch(cls, module: Any, dtype: Any = None) -> "LSTM":
        """Build an LSTM with the hyperparameters and weights of a ``torch.nn.LSTM``.

        Parameters
        ----------
        module : torch.nn.LSTM
            Read through its attributes and ``state_dict()``; pylstm does not import torch.
            Its ``batch_first`` is irrelevant: pylstm is always batch-first.
        dtype : dtype, optional
            Defaults to float64 if the module's weights are float64, else float32.
        """
        required = ("input_size", "hidden_size", "num_layers", "bidirectional", "state_dict")
        if not all(hasattr(module, attr) for attr in required) or \
                getattr(module, "mode", "LSTM") != "LSTM":
            raise TypeError(f"from_torch expects a torch.nn.LSTM, got {type(module).__name__}")
        weights = {name: _to_numpy(value) for name, value in module.state_dict().items()}
        if dtype is None:
            dtype = np.float64 if weights["weight_ih_l0"].dtype == np.float64 else np.float32
        layer = cls(int(module.input_size), int(module.hidden_size), int(module.num_layers),
                    bias=bool(getattr(module, "bias", True)),
                    bidirectional=bool(module.bidirectional),
                    proj_size=int(getattr(module, "proj_size", 0)),
                    dropout=float(getattr(module, "dropout", 0.0)), dtype=dtype)
        layer.load_state_dict(weights)
        return layer

    def save(self, path: Any) -> None:
        """Write this layer to one model file (see :func:`pylstm.load`); atomic, no pickle."""
        from ._io import save

        save(self, path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # views into _flat are rebuilt on load so they stay views; caches are rebuilt too
        for name in ("_params", "_version", "_cache", "_cache_version", "_flat_refs",
                     "_spare_buffers", "_spare_lock"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._params = _views(self._flat, self._layout)
        self._init_weight_cache()

    def __repr__(self) -> str:
        extras = "".join(f", {name}={getattr(self, name)!r}" for name, default in (
            ("num_layers", 1), ("bias", True), ("bidirectional", False), ("proj_size", 0),
            ("dropout", 0.0)) if getattr(self, name) != default)
        return f"LSTM({self.input_size}, {self.hidden_size}{extras}, dtype={self.dtype.name})"

    # ------------------------------------------------------------------ input checks
    def _check_input(self, x: Any) -> np.ndarray:
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 3:  # before converting: x may be a broadcast view
            check_blas_size(shape[0] * shape[1], 4 * self.hidden_size * shape[0])
        x = as_float_array(x, "x", self.dtype, 3, "(batch, time, features)")
        batch, time, features = x.shape
        if features != self.input_size:
            raise ValueError(f"x has {features} features per step, but this LSTM has "
                             f"input_size={self.input_size}")
        if batch == 0 or time == 0:
            raise ValueError(f"x must have at least one sequence and one time step, "
                             f"got shape {x.shape}")
        check_blas_size(batch * time, 4 * self.hidden_size * batch)
        return x

    def _check_state(self, state: Any, batch: int, name: str = "state") -> State:
        shapes = ((self.num_layers * self.num_directions, batch, self.output_size),
                  (self.num_layers * self.num_directions, batch, self.hidden_size))
        if state is None:
            return np.zeros(shapes[0], self.dtype), np.zeros(shapes[1], self.dtype)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name} must be a tuple (h, c) of two arrays, "
                            f"got {type(state).__name__}")
        h = as_float_array(_to_numpy(state[0]), name, self.dtype, 3, _STATE_DIMS)
        c = as_float_array(_to_numpy(state[1]), name, self.dtype, 3, _STATE_DIMS)
        for label, array, shape in (("h", h, shapes[0]), ("c", c, shapes[1])):
            if array.shape != shape:
                raise ValueError(f"{name} {label} must have shape {shape}, got {array.shape}")
        return h, c

    def initial_state(self, batch_size: int) -> State:
        """Zero state ``(h0, c0)`` for ``batch_size`` sequences."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        check_blas_size(4 * self.hidden_size * int(batch_size), what="batch_size")
        check_memory(self.num_layers * self.num_directions * int(batch_size)
                     * (self.output_size + self.hidden_size) * self.dtype.itemsize,
                     f"an initial state for {batch_size} sequences")
        return self._check_state(None, int(batch_size))

    # ------------------------------------------------------------------ forward
    def __call__(self, x: Any, state: State | None = None,
                 lengths: Any = None) -> tuple[np.ndarray, State]:
        """Run the LSTM over a batch of sequences (inference).

        Parameters
        ----------
        x : array-like of shape (batch, time, input_size)
        state : tuple (h0, c0), optional
            Shapes (num_layers * D, batch, P) and (num_layers * D, batch, hidden_size);
            zeros when omitted.
        lengths : array-like of int of shape (batch,), optional
            Valid steps of each sequence, in [1, time]. Steps past a sequence's
            end are ignored, its output there is zero, its final state is the
            one at its last valid step, and the reverse direction starts there.

        Returns
        -------
        out : ndarray of shape (batch, time, D * P)
        (h_n, c_n) : tuple of ndarray
            Shapes (num_layers * D, batch, P) and (num_layers * D, batch, hidden_size).

        Extra memory is O(batch * hidden_size) per layer, independent of time
        (plus one (batch, time, D * P) buffer between stacked layers).
        """
        if lengths is None:
            # Arrays the kernel can read as they are go straight to it; anything
            # else is converted and checked by the general path below.
            # The plan declines when stale, so staleness is only asked after a
            # decline, as in step(): not twice on every call.
            plan = self._cached("sequence plan")
            if plan is None:
                plan = self._prepared("sequence plan", self._sequence_plan)
            result = plan.forward(x, state, self._sequence_weights)
            if result is None and plan.stale:  # PYLSTM_SIMD changed since the plan was built
                plan = self._prepared("sequence plan", self._sequence_plan, rebuild=True)
                result = plan.forward(x, state, self._sequence_weights)
            if result is not None:
                return result
        out, state_n, _ = self._forward(x, state, lengths, train=False, rng=None)
        return out, state_n

    forward = __call__

    def forward_train(self, x: Any, state: State | None = None, lengths: Any = None,
                      rng: np.random.Generator | None = None
                      ) -> tuple[np.ndarray, State, _TrainCache]:
        """Forward pass that keeps what :meth:`backward` needs.

        Same arguments and outputs as :meth:`__call__`, plus a cache for
        :meth:`backward` (usable once). Dropout between layers, if set, applies
        here, with masks drawn from ``rng`` (default: the layer's own generator).

        The cache holds ``batch * time * (6 H + P)`` values per layer and
        direction (gates, states), plus each layer's input. :meth:`backward`
        gives its buffers back to the layer, which reuses them in the next
        training call of the same shapes (a training loop then allocates
        nothing large per step) and holds one set of them meanwhile; the
        estimators release them when ``fit`` ends.
        """
        return self._forward(x, state, lengths, train=True, rng=rng)

    def _forward(self, x: Any, state: State | None, lengths: Any, train: bool,
                 rng: np.random.Generator | None):
        x = self._check_input(x)
        batch, time, _ = x.shape
        h0, c0 = self._check_state(state, batch)
        packing = _Packing.build(batch, time, check_lengths(lengths, batch, time))
        H, P, D = self.hidden_size, self.output_size, self.num_directions
        n_rows = packing.n_rows
        if packing.identity:  # each direction's state is carried in place, in h_n and c_n
            h_n, c_n = (h0, c0) if state is None else (h0.copy(), c0.copy())
        else:
            h_n, c_n = np.empty_like(h0), np.empty_like(c0)
        level = _kernel.simd_level()
        # backward differentiates this pass, so it keeps the parameters it used:
        # an optimizer (or anything) may write to them before backward runs
        cache = (_TrainCache(self, (batch, time), packing, [], [], [], [], [], [], level,
                             _views(self._flat.copy(), self._layout))
                 if train else None)
        if train:
            chunk_steps, rows = time, n_rows
            hidden_scratch = None
            spares = self._take_spares()
        else:
            chunk_steps = _kernel.inference_chunk_steps(time, batch, _CHUNK_ROWS, _MIN_CHUNK_STEPS)
            rows = chunk_steps * batch
            gates = _empty((rows, 4 * H), self.dtype)
            packed = _empty(rows * self._widest_input(), self.dtype)
            hidden_scratch = _empty((batch, P), self.dtype)
        cell_out = _empty((batch, H), self.dtype) if self.proj_size else None
        layer_input = x
        for layer in range(self.num_layers):
            width = self._layer_input_size(layer)
            fuse_input = self._fuses_input(level, batch, width)
            out = np.empty((batch, time, D * P), self.dtype)
            if not packing.identity:  # the kernel writes live steps only
                _kernel.zero_past_ends(out, packing.lengths)
            if train:
                packed_x = self._work_buffer(spares, (n_rows, width))
                _kernel.gather_inputs(layer_input, packing.perm, packing.batch_sizes, packed_x)
                cache.packed_inputs.append(packed_x)
            else:
                packed_x = packed[:rows * width].reshape(rows, width)
            for direction in range(D):
                index = layer * D + direction
                w_ih, w_hh, bias, w_hr, panels, packed_weights = self._sequence_weights(
                    layer, direction, fuse_input, level)
                if packing.identity:
                    hidden, cell = h_n[index], c_n[index]
                else:
                    hidden, cell = h0[index][packing.perm], c0[index][packing.perm]
                if train:
                    gates = self._work_buffer(spares, (n_rows, 4 * H))
                    hidden_prev = self._work_buffer(spares, (n_rows, P))
                    cell_prev = self._work_buffer(spares, (n_rows, H))
                    tanh_cell = self._work_buffer(spares, (n_rows, H))
                    cache.gates.append(gates)
                    cache.hidden_prev.append(hidden_prev)
                    cache.cell_prev.append(cell_prev)
                    cache.tanh_cell.append(tanh_cell)
                else:
                    hidden_prev = cell_prev = tanh_cell = None
                _kernel.direction_forward(
                    layer_input, packing.perm, packing.batch_sizes, packing.offsets,
                    w_ih, w_hh, bias, w_hr, panels, packed_weights, level, fuse_input, hidden,
                    cell, out, direction * P, bool(direction), chunk_steps, packed_x, train, gates,
                    cell_out, hidden_scratch, hidden_prev, cell_prev, tanh_cell)
                if not packing.identity:
                    h_n[index][packing.perm], c_n[index][packing.perm] = hidden, cell
            if train and self.dropout and layer < self.num_layers - 1:
                generator = rng if rng is not None else self._rng
                keep = 1.0 - self.dropout
                mask = (generator.random(out.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
                out *= mask
                cache.dropout_masks.append(mask)
            layer_input = out
        if train:
            self._give_spares([b for same in spares.values() for b in same])  # for backward
        return layer_input, (h_n, c_n), cache

    def _sequence_weights(self, layer: int, direction: int, fuse_input: bool, level: int):
        """(w_ih, w_hh, bias, w_hr, panels, packed) of one layer direction for the sequence kernel, cached."""
        return self._prepared(
            ("sequence", layer, direction, level, fuse_input),
            lambda: self._kernel_weights(layer, direction, level, fuse_input, products=True))

    def _sequence_plan(self) -> "_kernel.SequencePlan":
        """The inference fast path's plan at the SIMD level in force now; weights are added as needed."""
        level = _kernel.simd_level()
        fuse_from = [self._fuse_from_batch(level, self._layer_input_size(layer))
                     for layer in range(self.num_layers)]
        return _kernel.SequencePlan(self.num_layers, self.num_directions, self.input_size,
                                    self.hidden_size, self.output_size, self._widest_input(),
                                    level, self.dtype, fuse_from, _CHUNK_ROWS, _MIN_CHUNK_STEPS)

    def _fuses_input(self, level: int, batch: int, input_size: int) -> bool:
        """Whether the SIMD step computes a layer's input term itself; see :meth:`_fuse_from_batch`."""
        return batch >= self._fuse_from_batch(level, input_size)

    def _fuse_from_batch(self, level: int, input_size: int) -> int:
        """The smallest batch whose SIMD step computes a layer's input term itself
        rather than one GEMM over a chunk of steps first (sys.maxsize: never).

        Fused, the step streams w_ih's panels with w_hh's at every step for a
        batch's rows, and saves the gate buffer's round trip. Measured at 1
        thread, T = 100 unless said (ms, fused / separate):

        * both fit in L2 (`mid`): 15.2 / 15.9;
        * w_hh's panels fit and [w_hh | w_ih]'s do not, H = 256: I = 512 15.3 /
          8.9 at B = 8, 39.8 / 35.4 at B = 32, 72.4 / 71.0 at B = 128 (T = 50);
          I = 192 6.1 / 5.2 at B = 8, 20.4 / 20.1 at B = 32;
        * neither fits, H = 512: I = 64 23.1 / 24.6 at B = 8, 32.5 / 36.9 at
          B = 16, 54.3 / 59.2 at B = 32; I = 128 36.4 / 39.6 at B = 16, 61.5 /
          66.9 at B = 32; I = 256 43.4 / 42.5 at B = 16, 74.0 / 75.0 at B = 32;
          I = 512 (T = 50) 21.9 / 16.6 at B = 8, 52.6 / 51.2 at B = 32, 94.3 /
          98.2 at B = 64, 181 / 191 at B = 128 (`large`).
        """
        if level == 0 or self.dtype != np.float32:
            return sys.maxsize
        recurrent = 16 * self.hidden_size * self.output_size  # bytes of 4H x P floats
        if recurrent + 16 * self.hidden_size * input_size <= _L2_BUDGET:
            return _FUSE_MIN_BATCH
        if recurrent <= _L2_BUDGET:  # fused, w_hh's panels would leave L2 with w_ih's
            return sys.maxsize
        return _FUSE_MIN_BATCH if 2 * input_size <= self.output_size else _FUSE_MIN_BATCH_FROM_L3

    def _kernel_weights(self, layer: int, direction: int, level: int, fuse_input: bool,
                        products: bool = False):
        """(w_ih, w_hh, bias, w_hr, panels[, packed]) of one layer direction, as the kernel takes them.

        With ``products``, also ``packed``: (w_ih.T, w_hh.T, w_hr.T) packed for the
        SIMD GEMM, each None where the sequence kernel does not multiply by it.
        """
        w_ih, w_hh, bias, w_hr = self._direction_weights(layer, direction)
        panels = None
        if level and self.dtype == np.float32:  # the fused SIMD step is float32 only
            panels = _kernel.pack_weights(w_hh, w_ih if fuse_input else None,
                                          self.hidden_size, level)
        if not products:
            return w_ih, w_hh, bias, w_hr, panels
        return (w_ih, w_hh, bias, w_hr, panels,
                _kernel.pack_products(w_ih, w_hh, w_hr, level, fuse_input))

    def _direction_weights(self, layer: int, direction: int,
                           params: dict[str, np.ndarray] | None = None):
        """(w_ih, w_hh, b_ih + b_hh, w_hr) of one layer direction, from ``params`` or the layer's."""
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        params = self._params if params is None else params
        if self.bias:
            bias = params[f"bias_ih_{suffix}"] + params[f"bias_hh_{suffix}"]
        else:
            bias = np.zeros(4 * self.hidden_size, self.dtype)
        w_hr = params[f"weight_hr_{suffix}"] if self.proj_size else None
        return params[f"weight_ih_{suffix}"], params[f"weight_hh_{suffix}"], bias, w_hr

    # ------------------------------------------------------------------ backward
    def backward(self, cache: _TrainCache, grad_output: Any = None,
                 grad_state: State | None = None, *, input_grad: bool = True) -> Gradients:
        """Backpropagation through time for one :meth:`forward_train` call.

        Parameters
        ----------
        cache : object
            The third value returned by :meth:`forward_train`; usable once. It
            keeps the parameters that pass used, so the gradients are those of
            that pass even if the parameters changed since.
        grad_output : array-like of shape (batch, time, D * P), optional
            dL/d(out); entries past a sequence's length are ignored. Zeros if omitted.
        grad_state : tuple (dh_n, dc_n), optional
            dL/dh_n and dL/dc_n, shaped like (h_n, c_n). Zeros if omitted.
        input_grad : bool, default True
            Whether to compute dL/dx. Training on fixed inputs needs only the
            parameter gradients (as with torch inputs that do not require
            grad); False skips the first layer's (batch * time, 4H) @ (4H,
            input_size) product and leaves ``Gradients.input`` None. The
            other gradients are the same, bit for bit.

        Returns
        -------
        Gradients
            ``input`` (batch, time, input_size) or None, ``state`` (dh0, dc0),
            ``params`` by torch name, and ``flat`` (all parameter gradients).
        """
        if not isinstance(input_grad, (bool, np.bool_)):
            raise TypeError(f"input_grad must be a bool, got {type(input_grad).__name__}")
        if not isinstance(cache, _TrainCache) or cache.owner is not self:
            raise TypeError("cache must be the third value returned by this layer's "
                            "forward_train")
        if cache.used:
            raise ValueError("this cache was already used by backward (it is consumed in "
                             "place); call forward_train again")
        batch, time = cache.shape
        H, P, D = self.hidden_size, self.output_size, self.num_directions
        if grad_output is None:
            grad_out = np.zeros((batch, time, D * P), self.dtype)
        else:
            grad_out = as_float_array(_to_numpy(grad_output), "grad_output", self.dtype, 3,
                                      "(batch, time, D * P)")
            if grad_out.shape != (batch, time, D * P):
                raise ValueError(f"grad_output must have shape {(batch, time, D * P)} "
                                 f"(the shape of out), got {grad_out.shape}")
        dh_n, dc_n = self._check_state(grad_state, batch, "grad_state")
        cache.used = True
        packing = cache.packing
        level = cache.level
        n_rows = packing.n_rows
        flat_grad = np.empty_like(self._flat)
        grad_params = _views(flat_grad, self._layout)
        dh0 = np.empty_like(dh_n)
        dc0 = np.empty_like(dc_n)
        spares = self._take_spares()     # what forward_train left: usually this pass's
        work = [*cache.packed_inputs, *cache.gates, *cache.hidden_prev, *cache.cell_prev,
                *cache.tanh_cell]       # kept for the next forward_train at the end
        if self.proj_size:
            d_cell_out = _empty((batch, H), self.dtype)
            d_hidden_all = self._work_buffer(spares, (n_rows, P))
            cell_out_all = self._work_buffer(spares, (n_rows, H))
            work += [d_hidden_all, cell_out_all]
        else:
            d_cell_out = d_hidden_all = cell_out_all = None
        for layer in reversed(range(self.num_layers)):
            packed_x = cache.packed_inputs[layer]
            needs_dx = layer > 0 or input_grad
            d_packed_x = self._work_buffer(spares, packed_x.shape) if needs_dx else None
            if needs_dx:
                work.append(d_packed_x)
            for direction in range(D):
                index = layer * D + direction
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh, _, w_hr = self._direction_weights(layer, direction, cache.params)
                d_hidden = dh_n[index][packing.perm]
                d_cell = dc_n[index][packing.perm]
                d_bias = np.empty(4 * H, self.dtype)
                _kernel.direction_backward(
                    grad_out, direction * P, bool(direction), level, packing.perm,
                    packing.batch_sizes, packing.offsets, w_ih, w_hh, w_hr,
                    d_hidden, d_cell, cache.gates[index], cache.cell_prev[index],
                    cache.tanh_cell[index], cache.hidden_prev[index], packed_x,
                    grad_params[f"weight_ih_{suffix}"], grad_params[f"weight_hh_{suffix}"],
                    d_bias, grad_params.get(f"weight_hr_{suffix}"), d_packed_x,
                    direction > 0, d_cell_out, d_hidden_all, cell_out_all)
                if self.bias:
                    grad_params[f"bias_ih_{suffix}"][:] = d_bias
                    grad_params[f"bias_hh_{suffix}"][:] = d_bias
                dh0[index][packing.perm] = d_hidden
                dc0[index][packing.perm] = d_cell
            if not needs_dx:  # the first layer, with input_grad=False
                grad_out = None
                continue
            d_input = np.empty((batch, time, packed_x.shape[1]), self.dtype)
            if not packing.identity:  # the scatter writes live steps only
                _kernel.zero_past_ends(d_input, packing.lengths)
            _kernel.scatter_inputs(d_packed_x, packing.perm, packing.batch_sizes, d_input)
            if layer > 0 and cache.dropout_masks:
                d_input *= cache.dropout_masks[layer - 1]
            grad_out = d_input
        # The cache's buffers (the gate buffers now hold gradients) serve the next
        # forward_train; the cache no longer refers to them.
        for buffers in (cache.packed_inputs, cache.gates, cache.hidden_prev, cache.cell_prev,
                        cache.tanh_cell):
            buffers.clear()
        self._give_spares(work)
        return Gradients(grad_out, (dh0, dc0), grad_params, flat_grad)

    # ------------------------------------------------------------------ streaming
    def step(self, x_t: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Advance a unidirectional LSTM by one time step.

        Parameters
        ----------
        x_t : array-like of shape (batch, input_size)
        state : tuple (h, c), optional
            Shapes (num_layers, batch, P) and (num_layers, batch, hidden_size),
            e.g. from :meth:`initial_state` or the previous call; zeros if omitted.

        Returns
        -------
        y_t : ndarray of shape (batch, P)
            The top layer's hidden state.
        (h, c) : tuple of ndarray
            The new state (new arrays; the inputs are not modified).
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional LSTM: a bidirectional layer's "
                             "reverse direction needs the whole sequence")
        # A streaming loop's own arrays go straight to the kernel; anything
        # else is converted and checked here first. Every step() is counted
        # in microseconds, so the fast path does as little as it can here.
        plan = self._cached("step")
        if plan is None:
            plan = self._prepared("step", self._step_plan)
        result = plan.step(x_t, state)
        if result is None:
            if plan.stale:  # PYLSTM_SIMD changed since the plan was built
                plan = self._prepared("step", self._step_plan, rebuild=True)
            x_t = as_float_array(x_t, "x_t", self.dtype, 2, "(batch, input_size)")
            batch, features = x_t.shape
            if features != self.input_size:
                raise ValueError(f"x_t has {features} features, but this LSTM has "
                                 f"input_size={self.input_size}")
            if batch == 0:
                raise ValueError(f"x_t must have at least one row, got shape {x_t.shape}")
            check_blas_size(4 * self.hidden_size * batch, what="the batch")
            result = plan.step(x_t, tuple(self._check_state(state, batch)))
            if result is None:  # cannot happen: checked and converted above
                raise RuntimeError("step(): converted inputs were not accepted by the kernel")
        return result

    def _step_plan(self) -> "_kernel.StepPlan":
        """Weights for step() at the SIMD level in force now (float32 only; float64 uses BLAS)."""
        level = _kernel.simd_level() if self.dtype == np.float32 else 0
        layers = [self._kernel_weights(layer, 0, level, fuse_input=True)
                  for layer in range(self.num_layers)]
        return _kernel.StepPlan(layers, self.input_size, self.hidden_size, self.output_size,
                                level, self.dtype)


def _views(flat: np.ndarray, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Named views into one flat parameter (or gradient) vector."""
    views, start = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        views[name] = flat[start:start + size].reshape(shape)
        start += size
    return views


def _to_numpy(value: Any) -> Any:
    """Turn a torch tensor (or anything with .detach/.cpu/.numpy) into a NumPy array."""
    if isinstance(value, np.ndarray):
        return value
    for method in ("detach", "cpu", "numpy"):
        if hasattr(value, method) and not isinstance(value, np.ndarray):
            value = getattr(value, method)()
    return value


def _as_generator(random_state: Any) -> np.random.Generator:
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**32 - 1, dtype=np.uint64))
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"random_state must be None, an int or a numpy Generator, "
                         f"got {random_state!r}") from exc
