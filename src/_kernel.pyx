"""The compiled LSTM kernel: forward and backward through time for one layer direction.

Data layout, written once here (the Python layer in ``pylstm/_layer.py``
builds these arrays and validates everything before calling in):

* Gate order is torch's (i, f, g, o). One layer direction has weights
  ``w_ih`` (4H, I), ``w_hh`` (4H, P), ``bias`` (4H,) = b_ih + b_hh, and
  ``w_hr`` (P, H) when it projects (P = proj_size); otherwise P = H.
* User-facing arrays are batch-first: ``x`` (B, T, I), ``out`` (B, T, width),
  where this direction owns columns ``out_col : out_col + P``.
* Sequences run in *packed* order, as torch's PackedSequence: ``perm`` sorts
  the batch by decreasing length, so at time t the live sequences are the
  first ``batch_sizes[t]`` of it, and packed row ``offsets[t] + b`` is
  sequence ``perm[b]`` at time t. Without lengths, perm is the identity.
* Buffers are unit-major: gates (4H, n_rows), hidden state (P, B), cell
  (H, B); one column per sequence. This makes the batch the M dimension of
  the per-step BLAS product (OpenBLAS runs that shape about twice as fast as
  with 4H as M) and makes the cell loop contiguous over the batch.

Because live sequences are always a prefix, a step touches only columns
``[0, batch_sizes[t])`` of the state: finished sequences keep their final
state (forward direction) and not-yet-started ones keep their initial state
(reverse direction, which starts each sequence at its own last step). Work is
proportional to the sum of lengths, never to the padded size.

Forward steps and backward steps carry matching tags [F1]..[F5] / [B1]..[B5].
"""
from cython cimport floating
from libc.string cimport memcpy

from _activations cimport sigmoid, tanh_
from _blas cimport gemm, NoTrans, Trans


# ---------------------------------------------------------------------------
# Pointer-only helpers (no GIL, no allocation)
# ---------------------------------------------------------------------------

cdef void _gather_inputs(const floating *x, Py_ssize_t T, Py_ssize_t I,
                         const Py_ssize_t *perm, const Py_ssize_t *batch_sizes,
                         Py_ssize_t t_begin, Py_ssize_t t_end,
                         floating *packed) noexcept nogil:
    """packed[row] = x[perm[b], t] for the packed rows (t, b), t in [t_begin, t_end)."""
    cdef Py_ssize_t t, b
    cdef Py_ssize_t row = 0
    for t in range(t_begin, t_end):
        for b in range(batch_sizes[t]):
            memcpy(packed + row * I, x + (perm[b] * T + t) * I, I * sizeof(floating))
            row += 1


cdef void _scatter_hidden(const floating *hidden, Py_ssize_t batch, Py_ssize_t P,
                          Py_ssize_t live, const Py_ssize_t *perm,
                          Py_ssize_t T, Py_ssize_t t, floating *out,
                          Py_ssize_t out_width, Py_ssize_t out_col) noexcept nogil:
    """out[perm[b], t, out_col:out_col + P] = hidden[:, b] for b < live; hidden (P, batch)."""
    cdef Py_ssize_t b, p
    cdef floating *dst
    for b in range(live):
        dst = out + (perm[b] * T + t) * out_width + out_col
        for p in range(P):
            dst[p] = hidden[p * batch + b]


cdef void _add_output_grad(floating *d_hidden, Py_ssize_t batch, Py_ssize_t P,
                           Py_ssize_t live, const Py_ssize_t *perm,
                           Py_ssize_t T, Py_ssize_t t, const floating *grad_out,
                           Py_ssize_t out_width, Py_ssize_t out_col) noexcept nogil:
    """d_hidden[:, b] += grad_out[perm[b], t, out_col:out_col + P] for b < live."""
    cdef Py_ssize_t b, p
    cdef const floating *src
    for b in range(live):
        src = grad_out + (perm[b] * T + t) * out_width + out_col
        for p in range(P):
            d_hidden[p * batch + b] += src[p]


cdef void _copy_columns(const floating *src, Py_ssize_t ld_src, floating *dst,
                        Py_ssize_t ld_dst, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """dst[:rows, :cols] = src[:rows, :cols] for row-major matrices of leading dims ld_*."""
    cdef Py_ssize_t j
    for j in range(rows):
        memcpy(dst + j * ld_dst, src + j * ld_src, cols * sizeof(floating))


cdef void _cell_forward(Py_ssize_t H, Py_ssize_t live, floating *gates,
                        Py_ssize_t ld_gates, const floating *bias, floating *cell,
                        floating *cell_out, Py_ssize_t ld_state) noexcept nogil:
    """[F3] Gates (4H, live) pre-activations -> activations, in place; cell update.

    NumPy: i, f, o = sigmoid(...), g = tanh(...); c = f*c + i*g;
    cell_out = o * tanh(c). ``cell`` and ``cell_out`` are (H, live) at stride ld_state.
    """
    cdef Py_ssize_t j, b
    cdef floating *gate_i
    cdef floating *gate_f
    cdef floating *gate_g
    cdef floating *gate_o
    cdef floating *c_row
    cdef floating *r_row
    cdef floating bias_i, bias_f, bias_g, bias_o, i, f, g, o, c
    for j in range(H):
        gate_i = gates + j * ld_gates
        gate_f = gates + (H + j) * ld_gates
        gate_g = gates + (2 * H + j) * ld_gates
        gate_o = gates + (3 * H + j) * ld_gates
        bias_i = bias[j]
        bias_f = bias[H + j]
        bias_g = bias[2 * H + j]
        bias_o = bias[3 * H + j]
        c_row = cell + j * ld_state
        r_row = cell_out + j * ld_state
        for b in range(live):
            i = sigmoid(gate_i[b] + bias_i)
            f = sigmoid(gate_f[b] + bias_f)
            g = tanh_(gate_g[b] + bias_g)
            o = sigmoid(gate_o[b] + bias_o)
            gate_i[b] = i
            gate_f[b] = f
            gate_g[b] = g
            gate_o[b] = o
            c = f * c_row[b] + i * g
            c_row[b] = c
            r_row[b] = o * tanh_(c)


cdef void _cell_backward(Py_ssize_t H, Py_ssize_t live, floating *gates,
                         Py_ssize_t ld_gates, const floating *cell_prev,
                         const floating *d_cell_out, floating *d_cell,
                         Py_ssize_t ld_state, floating *cell_out,
                         Py_ssize_t ld_cell_out) noexcept nogil:
    """[B3] Differentiates [F3]: activated gates (4H, live) -> pre-activation grads, in place.

    ``cell_prev`` (H, live) is c_{t-1} at stride ld_gates; ``d_cell_out`` is
    dL/d(o*tanh(c_t)) and ``d_cell`` carries dL/dc_t in and dL/dc_{t-1} out,
    both at stride ld_state. If ``cell_out`` is not NULL, o*tanh(c_t) is
    written there (needed for the projection's weight gradient).
    """
    cdef Py_ssize_t j, b
    cdef floating *gate_i
    cdef floating *gate_f
    cdef floating *gate_g
    cdef floating *gate_o
    cdef const floating *cp_row
    cdef const floating *dr_row
    cdef floating *dc_row
    cdef floating *r_row = NULL
    cdef floating i, f, g, o, c_prev, c, tanh_c, d_r, d_c
    for j in range(H):
        gate_i = gates + j * ld_gates
        gate_f = gates + (H + j) * ld_gates
        gate_g = gates + (2 * H + j) * ld_gates
        gate_o = gates + (3 * H + j) * ld_gates
        cp_row = cell_prev + j * ld_gates
        dr_row = d_cell_out + j * ld_state
        dc_row = d_cell + j * ld_state
        if cell_out != NULL:
            r_row = cell_out + j * ld_cell_out
        for b in range(live):
            i = gate_i[b]
            f = gate_f[b]
            g = gate_g[b]
            o = gate_o[b]
            c_prev = cp_row[b]
            c = f * c_prev + i * g          # recomputed: cheaper than storing c_t
            tanh_c = tanh_(c)
            if r_row != NULL:
                r_row[b] = o * tanh_c
            d_r = dr_row[b]
            d_c = dc_row[b] + d_r * o * (1 - tanh_c * tanh_c)
            dc_row[b] = d_c * f
            gate_i[b] = d_c * g * i * (1 - i)
            gate_f[b] = d_c * c_prev * f * (1 - f)
            gate_g[b] = d_c * i * (1 - g * g)
            gate_o[b] = d_r * tanh_c * o * (1 - o)


cdef void _column_sums(const floating *a, Py_ssize_t rows, Py_ssize_t cols,
                       floating *sums) noexcept nogil:
    """sums = a.sum(axis=1) for a row-major (rows, cols)."""
    cdef Py_ssize_t j, k
    cdef floating total
    for j in range(rows):
        total = 0
        for k in range(cols):
            total += a[j * cols + k]
        sums[j] = total


# ---------------------------------------------------------------------------
# One layer direction, forward
# ---------------------------------------------------------------------------

cdef void _direction_forward(
        Py_ssize_t B, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
        bint reverse, Py_ssize_t chunk_steps,
        const floating *x, const Py_ssize_t *perm,
        const Py_ssize_t *batch_sizes, const Py_ssize_t *offsets,
        const floating *w_ih, const floating *w_hh, const floating *bias,
        const floating *w_hr,
        floating *hidden, floating *cell,
        floating *out, Py_ssize_t out_width, Py_ssize_t out_col,
        floating *packed_x, bint x_is_packed, floating *gates,
        floating *cell_out, floating *hidden_prev, floating *cell_prev) noexcept nogil:
    """Run one direction over all steps, in chunks of ``chunk_steps`` time steps.

    For training, one chunk spans all T steps (chunk_steps >= T), ``packed_x`` (N, I) and
    ``gates`` (4H, N) are kept for backward, and ``hidden_prev`` (P, N) and
    ``cell_prev`` (H, N) record the state each step started from.
    For inference they are NULL and the chunk buffers are reused, so memory
    does not grow with T.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t chunk, step, t, t_begin, t_end, base, n_rows, live, col
    cdef bint projects = w_hr != NULL
    cdef floating *r = cell_out if projects else hidden
    for chunk in range(n_chunks):
        # Chunks (and steps in them) go forward in time, or backward for the
        # reverse direction; either way a chunk is one block of packed rows.
        if reverse:
            t_end = T - chunk * chunk_steps
            t_begin = max(t_end - chunk_steps, 0)
        else:
            t_begin = chunk * chunk_steps
            t_end = min(t_begin + chunk_steps, T)
        base = offsets[t_begin]
        n_rows = offsets[t_end] - base
        if not x_is_packed:
            _gather_inputs(x, T, I, perm, batch_sizes, t_begin, t_end, packed_x)
        # [F1] gates = w_ih @ packed_x.T : (4H, I) @ (I, n_rows)
        gemm(NoTrans, Trans, G, n_rows, I, 1, w_ih, I, packed_x, I, 0, gates, n_rows)
        for step in range(t_end - t_begin):
            t = t_end - 1 - step if reverse else t_begin + step
            live = batch_sizes[t]
            col = offsets[t] - base     # this step's first column in the gate buffer
            if hidden_prev != NULL:     # training: one chunk, so col is the packed row
                _copy_columns(hidden, B, hidden_prev + col, n_rows, P, live)
                _copy_columns(cell, B, cell_prev + col, n_rows, H, live)
            # [F2] gates[:, col:col+live] += w_hh @ hidden[:, :live] : (4H, P) @ (P, live)
            gemm(NoTrans, NoTrans, G, live, P, 1, w_hh, P, hidden, B, 1, gates + col, n_rows)
            # [F3] activations and cell update; r = o * tanh(c)
            _cell_forward(H, live, gates + col, n_rows, bias, cell, r, B)
            if projects:
                # [F4] hidden[:, :live] = w_hr @ r : (P, H) @ (H, live)
                gemm(NoTrans, NoTrans, P, live, H, 1, w_hr, H, r, B, 0, hidden, B)
            # [F5] out[perm[b], t, out_col:out_col+P] = hidden[:, b]
            _scatter_hidden(hidden, B, P, live, perm, T, t, out, out_width, out_col)


# ---------------------------------------------------------------------------
# One layer direction, backward (BPTT)
# ---------------------------------------------------------------------------

cdef void _direction_backward(
        Py_ssize_t B, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
        bint reverse, const floating *grad_out, Py_ssize_t out_width,
        Py_ssize_t out_col, const Py_ssize_t *perm,
        const Py_ssize_t *batch_sizes, const Py_ssize_t *offsets,
        const floating *w_ih, const floating *w_hh, const floating *w_hr,
        floating *d_hidden, floating *d_cell, floating *gates,
        const floating *cell_prev, const floating *hidden_prev,
        const floating *packed_x,
        floating *d_w_ih, floating *d_w_hh, floating *d_bias, floating *d_w_hr,
        floating *d_packed_x, floating beta_dx,
        floating *d_cell_out, floating *d_hidden_all, floating *cell_out_all) noexcept nogil:
    """Backpropagate one direction through time; weight gradients after the loop.

    In: ``d_hidden`` (P, B) and ``d_cell`` (H, B) hold dL/dh_n, dL/dc_n;
    ``gates`` (4H, N) the activated gates of the forward pass.
    Out: d_hidden, d_cell hold dL/dh0, dL/dc0; ``gates`` holds dL/d(pre-activations);
    weight gradients are overwritten; ``d_packed_x`` = dL/d(packed input) + beta_dx * d_packed_x.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t N = offsets[T]
    cdef Py_ssize_t step, t, live, col
    cdef bint projects = w_hr != NULL
    cdef floating *d_r = d_cell_out if projects else d_hidden
    for step in range(T):
        # Undo the forward order: the forward direction ran t = 0..T-1.
        t = step if reverse else T - 1 - step
        live = batch_sizes[t]
        col = offsets[t]
        # [B5] d_hidden[:, b] += grad_out[perm[b], t, out_col:out_col+P]
        _add_output_grad(d_hidden, B, P, live, perm, T, t, grad_out, out_width, out_col)
        if projects:
            # [B4] d_r = w_hr.T @ d_hidden : (H, P) @ (P, live); keep d_hidden for d_w_hr
            _copy_columns(d_hidden, B, d_hidden_all + col, N, P, live)
            gemm(Trans, NoTrans, H, live, P, 1, w_hr, H, d_hidden, B, 0, d_r, B)
        # [B3] gate and cell gradients, in place in gates[:, col:col+live]
        _cell_backward(H, live, gates + col, N, cell_prev + col, d_r, d_cell, B,
                       cell_out_all + col if projects else NULL, N)
        # [B2] d_hidden[:, :live] = w_hh.T @ d_gates : (P, 4H) @ (4H, live)
        gemm(Trans, NoTrans, P, live, G, 1, w_hh, P, gates + col, N, 0, d_hidden, B)
    # [B1] d_w_ih = d_gates @ packed_x : (4H, N) @ (N, I)
    gemm(NoTrans, NoTrans, G, I, N, 1, gates, N, packed_x, I, 0, d_w_ih, I)
    # [B2] d_w_hh = d_gates @ hidden_prev.T : (4H, N) @ (N, P)
    gemm(NoTrans, Trans, G, P, N, 1, gates, N, hidden_prev, N, 0, d_w_hh, P)
    # [B3] d_bias = d_gates.sum(axis=1), the same for b_ih and b_hh
    _column_sums(gates, G, N, d_bias)
    if projects:
        # [B4] d_w_hr = d_hidden_all @ cell_out_all.T : (P, N) @ (N, H)
        gemm(NoTrans, Trans, P, H, N, 1, d_hidden_all, N, cell_out_all, N, 0, d_w_hr, H)
    # [B1] d_packed_x (+)= d_gates.T @ w_ih : (N, 4H) @ (4H, I)
    gemm(Trans, NoTrans, N, I, G, 1, gates, N, w_ih, I, beta_dx, d_packed_x, I)


# ---------------------------------------------------------------------------
# Python-facing entry points: take memoryviews, hold the GIL only to read
# pointers, run the whole loop in one nogil block.
# ---------------------------------------------------------------------------

cdef inline floating *_ptr_or_null(floating[:, ::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0, 0]


def direction_forward(const floating[:, :, ::1] x,
                      const Py_ssize_t[::1] perm,
                      const Py_ssize_t[::1] batch_sizes,
                      const Py_ssize_t[::1] offsets,
                      const floating[:, ::1] w_ih,
                      const floating[:, ::1] w_hh,
                      const floating[::1] bias,
                      const floating[:, ::1] w_hr,
                      floating[:, ::1] hidden,
                      floating[:, ::1] cell,
                      floating[:, :, ::1] out,
                      Py_ssize_t out_col,
                      bint reverse,
                      Py_ssize_t chunk_steps,
                      floating[:, ::1] packed_x,
                      bint x_is_packed,
                      floating[:, ::1] gates,
                      floating[:, ::1] cell_out,
                      floating[:, ::1] hidden_prev,
                      floating[:, ::1] cell_prev):
    """Forward one layer direction; see the module docstring for shapes.

    x (B, T, I) batch-first; hidden (P, B) and cell (H, B) hold the sorted
    initial state and receive the final state; out (B, T, width) receives
    columns out_col:out_col+P. packed_x (rows, I) and gates (4H, rows) are
    workspaces of at least ``chunk_steps * B`` rows, or all N rows (with
    x_is_packed, packed_x already filled) for training. cell_out (H, B) is
    needed when projecting; hidden_prev (P, N) / cell_prev (H, N) only for training.
    """
    cdef Py_ssize_t B = x.shape[0]
    cdef Py_ssize_t T = x.shape[1]
    cdef Py_ssize_t I = w_ih.shape[1]
    cdef Py_ssize_t H = cell.shape[0]
    cdef Py_ssize_t P = hidden.shape[0]
    cdef const floating *w_hr_ptr = NULL
    if w_hr is not None and w_hr.shape[0] > 0:
        w_hr_ptr = &w_hr[0, 0]
    cdef floating *hidden_prev_ptr = _ptr_or_null(hidden_prev)
    cdef floating *cell_prev_ptr = _ptr_or_null(cell_prev)
    cdef floating *cell_out_ptr = _ptr_or_null(cell_out)
    cdef const floating *x_ptr = &x[0, 0, 0] if x.shape[2] > 0 else NULL
    with nogil:
        _direction_forward(B, T, I, H, P, reverse, chunk_steps, x_ptr,
                           &perm[0], &batch_sizes[0], &offsets[0],
                           &w_ih[0, 0], &w_hh[0, 0], &bias[0], w_hr_ptr,
                           &hidden[0, 0], &cell[0, 0],
                           &out[0, 0, 0], out.shape[2], out_col,
                           &packed_x[0, 0], x_is_packed, &gates[0, 0],
                           cell_out_ptr, hidden_prev_ptr, cell_prev_ptr)


def direction_backward(const floating[:, :, ::1] grad_out,
                       Py_ssize_t out_col,
                       bint reverse,
                       const Py_ssize_t[::1] perm,
                       const Py_ssize_t[::1] batch_sizes,
                       const Py_ssize_t[::1] offsets,
                       const floating[:, ::1] w_ih,
                       const floating[:, ::1] w_hh,
                       const floating[:, ::1] w_hr,
                       floating[:, ::1] d_hidden,
                       floating[:, ::1] d_cell,
                       floating[:, ::1] gates,
                       const floating[:, ::1] cell_prev,
                       const floating[:, ::1] hidden_prev,
                       const floating[:, ::1] packed_x,
                       floating[:, ::1] d_w_ih,
                       floating[:, ::1] d_w_hh,
                       floating[::1] d_bias,
                       floating[:, ::1] d_w_hr,
                       floating[:, ::1] d_packed_x,
                       bint accumulate_dx,
                       floating[:, ::1] d_cell_out,
                       floating[:, ::1] d_hidden_all,
                       floating[:, ::1] cell_out_all):
    """Backward one layer direction; see ``_direction_backward`` for the contract.

    grad_out (B, T, width) is dL/d(out); gates (4H, N), cell_prev (H, N),
    hidden_prev (P, N), packed_x (N, I) come from the training forward pass.
    d_cell_out (H, B), d_hidden_all (P, N), cell_out_all (H, N) are
    workspaces used only when projecting (w_hr non-empty).
    """
    cdef Py_ssize_t B = grad_out.shape[0]
    cdef Py_ssize_t T = grad_out.shape[1]
    cdef Py_ssize_t I = w_ih.shape[1]
    cdef Py_ssize_t H = d_cell.shape[0]
    cdef Py_ssize_t P = d_hidden.shape[0]
    cdef const floating *w_hr_ptr = NULL
    if w_hr is not None and w_hr.shape[0] > 0:
        w_hr_ptr = &w_hr[0, 0]
    cdef floating *d_w_hr_ptr = _ptr_or_null(d_w_hr)
    cdef floating *d_cell_out_ptr = _ptr_or_null(d_cell_out)
    cdef floating *d_hidden_all_ptr = _ptr_or_null(d_hidden_all)
    cdef floating *cell_out_all_ptr = _ptr_or_null(cell_out_all)
    cdef floating beta_dx = 1 if accumulate_dx else 0
    with nogil:
        _direction_backward(B, T, I, H, P, reverse, &grad_out[0, 0, 0],
                            grad_out.shape[2], out_col,
                            &perm[0], &batch_sizes[0], &offsets[0],
                            &w_ih[0, 0], &w_hh[0, 0], w_hr_ptr,
                            &d_hidden[0, 0], &d_cell[0, 0], &gates[0, 0],
                            &cell_prev[0, 0], &hidden_prev[0, 0], &packed_x[0, 0],
                            &d_w_ih[0, 0], &d_w_hh[0, 0], &d_bias[0], d_w_hr_ptr,
                            &d_packed_x[0, 0], beta_dx,
                            d_cell_out_ptr, d_hidden_all_ptr, cell_out_all_ptr)


def gather_inputs(const floating[:, :, ::1] x, const Py_ssize_t[::1] perm,
                  const Py_ssize_t[::1] batch_sizes, floating[:, ::1] packed):
    """packed (N, I)[offsets[t] + b] = x[perm[b], t] for all packed rows."""
    with nogil:
        _gather_inputs(&x[0, 0, 0], x.shape[1], x.shape[2], &perm[0],
                       &batch_sizes[0], 0, x.shape[1], &packed[0, 0])


def scatter_inputs(const floating[:, ::1] packed, const Py_ssize_t[::1] perm,
                   const Py_ssize_t[::1] batch_sizes, floating[:, :, ::1] x):
    """x[perm[b], t] = packed[offsets[t] + b]; rows past a sequence's end untouched."""
    cdef Py_ssize_t T = x.shape[1]
    cdef Py_ssize_t I = x.shape[2]
    cdef Py_ssize_t t, b
    cdef Py_ssize_t row = 0
    with nogil:
        for t in range(T):
            for b in range(batch_sizes[t]):
                memcpy(&x[0, 0, 0] + (perm[b] * T + t) * I, &packed[0, 0] + row * I,
                       I * sizeof(floating))
                row += 1
