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
* Buffers are batch-major: a row is one sequence at one step. Gates are
  (n_rows, 4H), hidden state (B, P), cell (B, H), so writing a step's output
  is a row copy and the state has the user's layout.
* Recurrent step [F2]+[F3]: for float32 on CPUs with AVX2/FMA or AVX-512, a
  hand-written kernel (``_simd.h``) multiplies by ``w_hh`` packed once per
  call into panels of 8/16 units and runs the activations and cell update on
  the register tile before it leaves registers. Otherwise (float64, or
  PYLSTM_SIMD=portable) one BLAS GEMM per step plus a scalar cell loop.

Because live sequences are always a prefix, a step touches only columns
rows ``[0, batch_sizes[t])`` of the state: finished sequences keep their final
state (forward direction) and not-yet-started ones keep their initial state
(reverse direction, which starts each sequence at its own last step). Work is
proportional to the sum of lengths, never to the padded size.

Forward steps and backward steps carry matching tags [F1]..[F5] / [B1]..[B5].
"""
from cython cimport floating
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.sequence cimport PySequence_GetItem
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.string cimport memcpy, memset

from _activations cimport sigmoid, tanh_
from libc.stdlib cimport free, malloc
from libc.limits cimport INT_MAX
cimport numpy as cnp
import numpy as np

cnp.import_array()

from _blas cimport (CACHE_LINE, BlasTranspose, NoTrans, Trans, aligned_malloc, gemm, matmul, pack_operand,
                   pack_operand_into, packed_buffer, pylstm_packed_b_size, transpose_into)


cdef extern from "unistd.h" nogil:
    long sysconf(int name)
    enum: _SC_LEVEL2_CACHE_SIZE

cdef extern from "_simd.h" nogil:
    int PYLSTM_PORTABLE, PYLSTM_AVX2, PYLSTM_AVX512
    void pylstm_set_l2_budget(long bytes)
    int pylstm_cpu_level()
    int pylstm_simd_level()
    long pylstm_packed_size(int level, int H, int P, int I)
    void pylstm_pack_weights(int level, int H, int P, int I, const float *w_hh,
                             const float *w_ih, float *packed)
    void pylstm_step(int level, int live, int H, int P, int I, const float *panels,
                     const float *bias, const float *h_prev, int ld_h,
                     const float *x, int ld_x, float *gates, int ld_gates,
                     int store_gates, float *cell, int ld_cell,
                     float *cell_out, int ld_out, float *tanh_cell, int ld_tanh,
                     float *cell_prev, int ld_prev,
                     const float **h_rows, const float **x_rows, float **out_rows,
                     float **next_rows)
    int pylstm_vector_activation(int level, int which, const float *x, float *out, long n)
    bint pylstm_all_finite_f32(const float *values, long n)
    bint pylstm_all_finite_f64(const double *values, long n)
    void pylstm_cell_backward_f32(int level, long H, long live, float *gates,
                                  const float *cell_prev, const float *tanh_cell,
                                  float *d_cell_out, const float **out_grad,
                                  float *d_cell, float *cell_out)
    void pylstm_cell_backward_f64(int level, long H, long live, double *gates,
                                  const double *cell_prev, const double *tanh_cell,
                                  double *d_cell_out, const double **out_grad,
                                  double *d_cell, double *cell_out)
    void pylstm_cell_forward_f64(int level, long H, long live, double *gates, const double *bias,
                                 double *cell, double *cell_out, double *tanh_cell)
    void pylstm_activations_f64(int level, int which, const double *x, double *out, long n)
    void pylstm_add_row_sums_f32(int level, const float *a, long rows, long cols, float *sums)
    void pylstm_add_row_sums_f64(int level, const double *a, long rows, long cols, double *sums)
    void pylstm_adam_update_f32(int level, long n, float *param, const float *grad,
                                float *first, float *second, float rate, float beta_1,
                                float one_minus_1, float beta_2, float one_minus_2,
                                float epsilon)
    void pylstm_adam_update_f64(int level, long n, double *param, const double *grad,
                                double *first, double *second, double rate, double beta_1,
                                double one_minus_1, double beta_2, double one_minus_2,
                                double epsilon)
    void pylstm_sgd_update_f32(int level, long n, float *param, const float *grad,
                               float *velocity, float rate, float momentum, int nesterov)
    void pylstm_sgd_update_f64(int level, long n, double *param, const double *grad,
                               double *velocity, double rate, double momentum, int nesterov)
    void pylstm_set_num_threads(int n)
    int pylstm_get_num_threads()
    long pylstm_parts_taken_over()
    int pylstm_row_parts(int level, long live, long H, long K, long elem)
    ctypedef void (*pylstm_task)(void *context, int part, int n_parts) noexcept nogil
    int pylstm_parallel(int max_parts, pylstm_task task, void *context)
    const void *pylstm_replica(int part, const void *master, long bytes)
    void pylstm_new_replica_epoch()
    void pylstm_count_row_run()
    long pylstm_row_runs_so_far()


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


cdef void _scatter_hidden(const floating *hidden, Py_ssize_t P, Py_ssize_t live,
                          const Py_ssize_t *perm, Py_ssize_t T, Py_ssize_t t,
                          floating *out, Py_ssize_t out_width,
                          Py_ssize_t out_col) noexcept nogil:
    """[F5] out[perm[b], t, out_col:out_col + P] = hidden[b] for b < live."""
    cdef Py_ssize_t b
    for b in range(live):
        memcpy(out + (perm[b] * T + t) * out_width + out_col, hidden + b * P,
               P * sizeof(floating))


cdef void _add_output_grad(floating *d_hidden, Py_ssize_t P, Py_ssize_t live,
                           const Py_ssize_t *perm, Py_ssize_t T, Py_ssize_t t,
                           const floating *grad_out, Py_ssize_t out_width,
                           Py_ssize_t out_col) noexcept nogil:
    """[B5] d_hidden[b] += grad_out[perm[b], t, out_col:out_col + P] for b < live."""
    cdef Py_ssize_t b, p
    cdef const floating *src
    cdef floating *dst
    for b in range(live):
        src = grad_out + (perm[b] * T + t) * out_width + out_col
        dst = d_hidden + b * P
        for p in range(P):
            dst[p] += src[p]


cdef inline void _cell_forward(int level, Py_ssize_t H, Py_ssize_t live, floating *gates,
                               const floating *bias, floating *cell,
                               floating *cell_out, floating *tanh_cell) noexcept nogil:
    """[F3] Gates (live, 4H) pre-activations -> activations, in place; cell update.

    NumPy: i, f, o = sigmoid(z + bias); g = tanh(z + bias); c = f*c + i*g;
    cell_out = o * tanh(c). ``cell``, ``cell_out`` and (training only, else
    NULL) ``tanh_cell`` = tanh(c) are (live, H). float64 runs the vectorised
    loop of _cell_impl.h at every level (libm's scalar exp and tanh were 40%
    of a float64 forward); float32 reaches here only on the portable level.
    """
    if floating is double:
        pylstm_cell_forward_f64(level, H, live, gates, bias, cell, cell_out, tanh_cell)
    else:
        _cell_forward_libm(H, live, gates, bias, cell, cell_out, tanh_cell)


cdef void _cell_forward_libm(Py_ssize_t H, Py_ssize_t live, float *gates, const float *bias,
                             float *cell, float *cell_out, float *tanh_cell) noexcept nogil:
    """_cell_forward for float32 on the portable level, with libm's expf and tanhf."""
    cdef Py_ssize_t j, b
    cdef float *z
    cdef float *c_row
    cdef float *r_row
    cdef float *t_row = NULL
    cdef float i, f, g, o, c, tanh_c
    for b in range(live):
        z = gates + b * 4 * H
        c_row = cell + b * H
        r_row = cell_out + b * H
        if tanh_cell != NULL:
            t_row = tanh_cell + b * H
        for j in range(H):
            i = sigmoid(z[j] + bias[j])
            f = sigmoid(z[H + j] + bias[H + j])
            g = tanh_(z[2 * H + j] + bias[2 * H + j])
            o = sigmoid(z[3 * H + j] + bias[3 * H + j])
            z[j] = i
            z[H + j] = f
            z[2 * H + j] = g
            z[3 * H + j] = o
            c = f * c_row[j] + i * g
            c_row[j] = c
            tanh_c = tanh_(c)
            r_row[j] = o * tanh_c
            if t_row != NULL:
                t_row[j] = tanh_c


cdef inline void _cell_backward(int level, Py_ssize_t H, Py_ssize_t live, floating *gates,
                                const floating *cell_prev, const floating *tanh_cell,
                                floating *d_cell_out, const floating **out_grad,
                                floating *d_cell, floating *cell_out) noexcept nogil:
    """[B3] Differentiates [F3], in place in ``gates``; see ``_cell_impl.h``."""
    if floating is float:
        pylstm_cell_backward_f32(level, H, live, gates, cell_prev, tanh_cell, d_cell_out,
                                 out_grad, d_cell, cell_out)
    else:
        pylstm_cell_backward_f64(level, H, live, gates, cell_prev, tanh_cell, d_cell_out,
                                 out_grad, d_cell, cell_out)


cdef inline void _add_row_sums(int level, const floating *a, Py_ssize_t rows, Py_ssize_t cols,
                               floating *sums) noexcept nogil:
    """sums += a.sum(axis=0) for a row-major (rows, cols)."""
    if floating is float:
        pylstm_add_row_sums_f32(level, a, rows, cols, sums)
    else:
        pylstm_add_row_sums_f64(level, a, rows, cols, sums)


# ---------------------------------------------------------------------------
# One layer direction, forward
# ---------------------------------------------------------------------------

cdef inline bint _sequence_plan(bint is_float, int level, bint fuse_input, bint projects,
                                bint *gemm) noexcept nogil:
    """Whether a sequence's steps run the fused SIMD step (float32 at a SIMD
    level), and in ``gemm`` which of [F1] x @ w_ih.T, [F2] h @ w_hh.T and
    [F4] r @ w_hr.T go through ``matmul`` (so need w_ih.T, w_hh.T, w_hr.T
    packed at SIMD levels). The one place for this choice: ``pack_products``
    (the weight cache) and ``_direction_forward`` both ask here."""
    cdef bint simd_step = is_float and level != PYLSTM_PORTABLE
    gemm[0] = not (simd_step and fuse_input)
    gemm[1] = not simd_step
    gemm[2] = projects
    return simd_step


# The batch as the time loops see it (see the module docstring): sorted by
# decreasing length, ``perm[b]`` the caller's row of sorted row b,
# ``batch_sizes[t]`` the rows live at step t (a prefix), ``offsets[t]`` the
# packed row of step t's first row; ``reverse`` for the reverse direction.
ctypedef struct _Batch:
    Py_ssize_t T
    bint reverse
    const Py_ssize_t *perm
    const Py_ssize_t *batch_sizes
    const Py_ssize_t *offsets


# A run of steps through the SIMD step without projection: what every step
# of it shares. Inference (``in_place``) reads h_{t-1} and x_t where they lie
# and writes h_t into ``out``; training keeps each step's state in the packed
# rows of ``hidden_prev``, ``cell_prev``, ``tanh_cell`` and ``gates``.
ctypedef struct _StepRun:
    _Batch batch
    int level, H, P, I, fused_I    # fused_I: I if the step computes the input term, else 0
    Py_ssize_t G, base, out_width, out_col
    bint in_place
    const float *panels
    const float *bias
    const float *x
    float *out
    float *hidden
    float *cell
    float *gates
    float *packed_x
    float *hidden_prev
    float *cell_prev
    float *tanh_cell
    const float **h_rows        # (B,) row b's h_{t-1}
    const float **x_rows        # (B,) row b's x_t
    float **out_rows            # (B,) where row b's h_t goes
    float **next_rows           # (B,) where row b's h_t is kept (training)
    Py_ssize_t t_begin, t_end   # the chunk
    Py_ssize_t step_begin, step_end   # the run, as steps of the chunk
    Py_ssize_t live             # rows live throughout the run


cdef inline Py_ssize_t _chunk_time(const _StepRun *run, Py_ssize_t step) noexcept nogil:
    """The time index of a chunk's step ``step`` (chunks run backward in time for reverse)."""
    return run.t_end - 1 - step if run.batch.reverse else run.t_begin + step


cdef void _run_steps(const _StepRun *run, Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """[F1]+[F2]+[F3] for rows [row_begin, row_end) of the batch through the run's steps.

    Rows never depend on each other within a step, so parts of a run that
    take disjoint rows need nothing from each other until the run ends; each
    row's sums are the same whichever part computes them. A step split
    further (one part over all rows) is split by the step itself.
    """
    cdef Py_ssize_t T = run.batch.T, G = run.G, P = run.P, H = run.H
    cdef Py_ssize_t step, t, row, live, end, b, source, started, t_next
    cdef float *gates
    for step in range(run.step_begin, run.step_end):
        t = _chunk_time(run, step)
        live = run.batch.batch_sizes[t]
        end = min(live, row_end)
        if end <= row_begin:
            continue
        row = run.batch.offsets[t] - run.base + row_begin   # the part's first packed row
        gates = run.gates + row * G if run.gates != NULL else NULL
        if run.in_place:
            for b in range(row_begin, end):
                source = run.batch.perm[b] * T
                # The batch is sorted by length, so a row live at step t was
                # live at the step before, unless t is its first step.
                if run.batch.reverse and t + 1 < T and b < run.batch.batch_sizes[t + 1]:
                    run.h_rows[b] = run.out + (source + t + 1) * run.out_width + run.out_col
                elif not run.batch.reverse and t > 0:
                    run.h_rows[b] = run.out + (source + t - 1) * run.out_width + run.out_col
                else:
                    run.h_rows[b] = run.hidden + b * P
                run.x_rows[b] = run.x + (source + t) * run.I
                run.out_rows[b] = run.out + (source + t) * run.out_width + run.out_col
            pylstm_step(run.level, end - row_begin, H, P, run.fused_I, run.panels, run.bias,
                        NULL, 0, NULL, 0, gates, G, False, run.cell + row_begin * H, H,
                        NULL, 0, NULL, 0, NULL, 0, run.h_rows + row_begin,
                        run.x_rows + row_begin, run.out_rows + row_begin, NULL)
            continue
        # Training (one chunk, so packed rows are the chunk's). Rows that start
        # at this step (all at the first step; in reverse, the rows whose last
        # step this is) begin from h0.
        if run.batch.reverse:
            started = run.batch.batch_sizes[t + 1] if t + 1 < T else 0
        else:
            started = live if t > 0 else 0
        started = max(started, row_begin)
        if started < end:
            memcpy(run.hidden_prev + (row + started - row_begin) * P, run.hidden + started * P,
                   (end - started) * P * sizeof(float))
        t_next = t - 1 if run.batch.reverse else t + 1
        for b in range(row_begin, end):
            run.out_rows[b] = run.out + (run.batch.perm[b] * T + t) * run.out_width + run.out_col
            # A row live at the next step keeps h_t as that step's h_prev;
            # one that ends here leaves it in hidden as its h_n.
            if 0 <= t_next < T and b < run.batch.batch_sizes[t_next]:
                run.next_rows[b] = run.hidden_prev + (run.batch.offsets[t_next] - run.base + b) * P
            else:
                run.next_rows[b] = run.hidden + b * P
        pylstm_step(run.level, end - row_begin, H, P, run.fused_I, run.panels, run.bias,
                    run.hidden_prev + row * P, P, run.packed_x + row * run.I, run.I,
                    gates, G, True, run.cell + row_begin * H, H, NULL, 0,
                    run.tanh_cell + row * H, H, run.cell_prev + row * H, H,
                    NULL, NULL, run.out_rows + row_begin, run.next_rows + row_begin)


cdef void _run_steps_part(void *context, int part, int n_parts) noexcept nogil:
    """pylstm_parallel task: part ``part`` of ``n_parts`` of a run's rows."""
    cdef const _StepRun *run = <const _StepRun *> context
    cdef _StepRun own = run[0]
    own.panels = <const float *> pylstm_replica(
        part, run.panels, pylstm_packed_size(run.level, run.H, run.P, run.fused_I) * sizeof(float))
    _run_steps(&own, run.live * part // n_parts, run.live * (part + 1) // n_parts)


cdef void _run_chunk_steps(_StepRun *run) noexcept nogil:
    """Every step of a chunk, through the SIMD step without projection.

    Steps are taken in runs over which the live rows do not change (all of
    them for a batch of equal lengths). When a step of that many rows would
    split its rows across threads (the panels stay in each core's L2), the
    whole run is one parallel region, each thread taking its rows through
    every step of it: one hand-over per run instead of one per step.
    Otherwise each step splits itself (by unit blocks, or not at all).
    """
    cdef Py_ssize_t n_steps = run.t_end - run.t_begin
    cdef Py_ssize_t step = 0, run_end
    cdef int parts
    while step < n_steps:
        run.live = run.batch.batch_sizes[_chunk_time(run, step)]
        run_end = step + 1
        while run_end < n_steps and run.batch.batch_sizes[_chunk_time(run, run_end)] == run.live:
            run_end += 1
        run.step_begin, run.step_end = step, run_end
        parts = pylstm_row_parts(run.level, run.live, run.H, run.P + run.fused_I, sizeof(float))
        if parts > 1 and run_end - step > 1:
            if pylstm_parallel(parts, _run_steps_part, run) > 1:
                pylstm_count_row_run()
        else:
            _run_steps(run, 0, run.live)
        step = run_end


cdef int _direction_forward(
        Py_ssize_t B, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
        bint reverse, Py_ssize_t chunk_steps, int level, bint fuse_input,
        const floating *x, const Py_ssize_t *perm,
        const Py_ssize_t *batch_sizes, const Py_ssize_t *offsets,
        const floating *w_ih, const floating *w_hh, const floating *bias,
        const floating *w_hr, const float *panels, const floating **packed_weights,
        floating *hidden, floating *cell,
        floating *out, Py_ssize_t out_width, Py_ssize_t out_col,
        floating *packed_x, bint x_is_packed, floating *gates,
        floating *cell_out, floating *hidden_scratch,
        floating *hidden_prev, floating *cell_prev, floating *tanh_cell) noexcept nogil:
    """Run one direction over all steps, in chunks of ``chunk_steps`` time steps.

    For training, one chunk spans all T steps (chunk_steps >= T), ``packed_x``
    (N, I) and ``gates`` (N, 4H) are kept for backward, and ``hidden_prev``
    (N, P), ``cell_prev`` (N, H) record the state each step started from and
    ``tanh_cell`` (N, H) the tanh of the cell it ended with.
    For inference those are NULL, the step reads the previous hidden state
    from ``hidden_scratch`` (B, P) (through the SIMD step without projection:
    from ``out`` itself, see ``in_place``), and the chunk buffers are reused,
    so memory does not grow with T.
    With ``fuse_input`` (float32 at a SIMD level) the step computes the input
    term itself from ``panels`` = packed [w_hh | w_ih], and [F1] is skipped.
    ``packed_weights`` holds w_ih.T, w_hh.T and w_hr.T as ``pack_products``
    packs them for ``level`` (the weight cache keeps them between calls), or
    NULL for any this call should pack itself.
    Returns 0, or -1 if a packing buffer could not be allocated.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t n_chunks = (T + chunk_steps - 1) // chunk_steps
    cdef Py_ssize_t chunk, step, t, t_begin, t_end, base, n_rows, live, row
    cdef bint projects = w_hr != NULL
    cdef floating *r = cell_out if projects else hidden
    cdef floating *h_prev
    cdef floating *tanh_rows = NULL
    cdef bint gemm[3]
    cdef bint simd_step = _sequence_plan(floating is float, level, fuse_input, projects, gemm)
    cdef bint input_gemm = gemm[0]
    # In place (inference through the SIMD step, no projection): each step reads
    # h_{t-1} where it lies in the output array (h0 at a row's first step),
    # writes h_t there (and reads x in the input, if fused), through per-row
    # address tables, rather than copying rows in and out of state buffers.
    cdef bint in_place = simd_step and not projects and hidden_prev == NULL
    # Training through the SIMD step without projection: the step writes h_t
    # into the output array and into the next step's rows of hidden_prev (or
    # h_n's), and stores c_{t-1} into cell_prev from registers, so no pass of
    # its own copies the state in and out of them.
    cdef bint keeps_rows = simd_step and not projects and hidden_prev != NULL
    cdef _StepRun run    # their steps' shared arguments, and per-row address tables
    cdef const float **h_rows = NULL
    cdef Py_ssize_t b, t_last
    if in_place or keeps_rows:
        h_rows = <const float **> malloc(4 * B * sizeof(float *))
        if h_rows == NULL:
            return -1
        run.level, run.H, run.P, run.I = level, H, P, I
        run.fused_I = I if fuse_input else 0
        run.batch = _Batch(T, reverse, perm, batch_sizes, offsets)
        run.G, run.out_width, run.out_col = G, out_width, out_col
        run.in_place = in_place
        run.panels, run.bias, run.x = panels, <const float *> bias, <const float *> x
        run.out, run.hidden, run.cell = <float *> out, <float *> hidden, <float *> cell
        run.gates, run.packed_x = <float *> gates, <float *> packed_x
        run.hidden_prev, run.cell_prev = <float *> hidden_prev, <float *> cell_prev
        run.tanh_cell = <float *> tanh_cell
        run.h_rows, run.x_rows = h_rows, h_rows + B
        run.out_rows, run.next_rows = <float **> (h_rows + 2 * B), <float **> (h_rows + 3 * B)
    # Right-hand operands of the SIMD GEMM (level > 0): the cached ones, or
    # packed here once per call (and freed at the end).
    cdef floating *own_w_ih_t = NULL
    cdef floating *own_w_hh_t = NULL
    cdef floating *own_w_hr_t = NULL
    cdef const floating *w_ih_t = packed_weights[0]     # w_ih.T (I, 4H)  for [F1]
    cdef const floating *w_hh_t = packed_weights[1]     # w_hh.T (P, 4H)  for [F2] without the SIMD step
    cdef const floating *w_hr_t = packed_weights[2]     # w_hr.T (H, P)   for [F4]
    if level != PYLSTM_PORTABLE:
        if gemm[0] and w_ih_t == NULL:
            w_ih_t = own_w_ih_t = pack_operand(level, Trans, I, G, w_ih, I)
        if gemm[1] and w_hh_t == NULL:
            w_hh_t = own_w_hh_t = pack_operand(level, Trans, P, G, w_hh, P)
        if gemm[2] and w_hr_t == NULL:
            w_hr_t = own_w_hr_t = pack_operand(level, Trans, H, P, w_hr, H)
        if (gemm[0] and w_ih_t == NULL) or (gemm[1] and w_hh_t == NULL) \
                or (gemm[2] and w_hr_t == NULL):
            free(own_w_ih_t)
            free(own_w_hh_t)
            free(own_w_hr_t)
            free(h_rows)
            return -1
    # The panels may be new since the last call (or repacked in place): the
    # parts' copies of them (pylstm_replica) are made afresh.
    pylstm_new_replica_epoch()
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
        if not x_is_packed and not (in_place and not input_gemm):
            _gather_inputs(x, T, I, perm, batch_sizes, t_begin, t_end, packed_x)
        if input_gemm:
            # [F1] gates = packed_x @ w_ih.T : (n_rows, I) @ (I, 4H)
            matmul(level, NoTrans, Trans, n_rows, G, I, packed_x, I, w_ih, I, w_ih_t,
                   False, gates, G)
        if in_place or keeps_rows:
            run.t_begin, run.t_end, run.base = t_begin, t_end, base
            _run_chunk_steps(&run)
            continue
        for step in range(t_end - t_begin):
            t = t_end - 1 - step if reverse else t_begin + step
            live = batch_sizes[t]
            row = offsets[t] - base     # this step's first row in the chunk
            # The step reads h_{t-1} from a copy, so it can write h_t in place.
            if hidden_prev != NULL:     # training: one chunk, so row is the packed row
                h_prev = hidden_prev + row * P
                tanh_rows = tanh_cell + row * H
                memcpy(cell_prev + row * H, cell, live * H * sizeof(floating))
            else:
                h_prev = hidden_scratch
            memcpy(h_prev, hidden, live * P * sizeof(floating))
            if simd_step:
                # [F1]+[F2]+[F3] fused: z = h_prev @ w_hh.T (+ x @ w_ih.T) + bias,
                # activations and cell update while the tile is in registers
                pylstm_step(level, live, H, P, I if fuse_input else 0, panels,
                            <const float *> bias, <const float *> h_prev, P,
                            <const float *> packed_x + row * I, I,
                            <float *> gates + row * G, G, hidden_prev != NULL,
                            <float *> cell, H, <float *> r, H, <float *> tanh_rows, H,
                            NULL, 0, NULL, NULL, NULL, NULL)
            else:
                # [F2] gates[rows] += h_prev @ w_hh.T : (live, P) @ (P, 4H)
                matmul(level, NoTrans, Trans, live, G, P, h_prev, P, w_hh, P, w_hh_t,
                       True, gates + row * G, G)
                # [F3] activations and cell update; r = o * tanh(c)
                _cell_forward(level, H, live, gates + row * G, bias, cell, r, tanh_rows)
            if projects:
                # [F4] hidden = r @ w_hr.T : (live, H) @ (H, P)
                matmul(level, NoTrans, Trans, live, P, H, r, H, w_hr, H, w_hr_t,
                       False, hidden, P)
            _scatter_hidden(hidden, P, live, perm, T, t, out, out_width, out_col)
    if in_place:  # h_n: each row's output at its last step
        for b in range(B):
            t_last = 0
            if not reverse:
                t_last = T - 1
                while batch_sizes[t_last] <= b:
                    t_last -= 1
            memcpy(hidden + b * P, out + (perm[b] * T + t_last) * out_width + out_col,
                   P * sizeof(floating))
    free(h_rows)
    free(own_w_ih_t)
    free(own_w_hh_t)
    free(own_w_hr_t)
    return 0


# ---------------------------------------------------------------------------
# One layer direction, backward (BPTT)
# ---------------------------------------------------------------------------

# The backward loop takes its weight gradients a chunk of this many rows at
# a time, while they fit in twice one core's L2 (_L2_BYTES; see _direction_backward).
cdef enum:
    _CHUNK_ROWS = 256


cdef inline void _add_chunk_grad(int level, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rows,
                                 const floating *left, const floating *left_t,
                                 const floating *right, floating *right_packed,
                                 bint accumulate, floating *d_w) noexcept nogil:
    """d_w (m, n) (+)= left.T @ right for a chunk: left (rows, m), right (rows, n).

    SIMD levels read ``left_t``, the caller's (m, rows) copy of left.T (read
    in place, left.T's columns have a power-of-two stride that thrashes one L1
    set; one copy of a chunk of d_gates serves two gradients), and pack
    ``right`` into ``right_packed``.
    """
    if level == PYLSTM_PORTABLE:
        matmul(level, Trans, NoTrans, m, n, rows, left, m, right, n, NULL, accumulate, d_w, n)
        return
    pack_operand_into(level, NoTrans, rows, n, right, n, right_packed)
    # by rows of left.T when the packed right fits in L2: every thread reads
    # the small right operand whole, and only its rows of the large left.T
    matmul(level, NoTrans, NoTrans, m, n, rows, left_t, rows, right, n, right_packed,
           accumulate, d_w, n, prefer_rows=True)


# A run of backward steps: what every step of it shares. The arrays are
# float or double (``is_double``), as _direction_backward's.
ctypedef struct _BackRun:
    _Batch batch
    int level
    bint projects, is_double
    Py_ssize_t H, P, G, out_width, out_col
    const void *grad_out
    const void *cell_prev
    const void *tanh_cell
    const void *w_hh
    const void *w_hh_p           # w_hh packed for [B2] (SIMD levels), else NULL
    long w_hh_p_bytes
    const void *w_hr
    const void *w_hr_p
    void *gates
    void *d_hidden
    void *d_cell
    void *d_r
    void *d_hidden_all
    void *cell_out_all
    void *d_bias
    const void **out_grad        # (B,) where row b's dL/d(out) at the step lies
    Py_ssize_t step_begin, step_end   # the run, as steps of the backward loop
    Py_ssize_t live              # rows live throughout the run


cdef inline Py_ssize_t _backward_time(const _BackRun *run, Py_ssize_t step) noexcept nogil:
    """The time index of backward step ``step``: the forward order, undone."""
    return step if run.batch.reverse else run.batch.T - 1 - step


cdef void _backward_steps(const _BackRun *run, const floating *w_hh_p,
                          Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """[B5], [B4], [B3] and [B2] for rows [row_begin, row_end) through the run's steps.

    ``w_hh_p``: the packed w_hh this part reads (its own copy for parts > 0).
    As in the forward, rows never depend on each other within a step (the
    cell backward and d_gates @ w_hh are row by row), so parts taking
    disjoint rows need nothing from each other until the run ends, and each
    row's values are the same whichever part computes them. The projection's
    and the BLAS level's steps take all rows (row_begin 0, row_end B).
    """
    cdef Py_ssize_t T = run.batch.T, H = run.H, P = run.P, G = run.G
    cdef Py_ssize_t step, t, live, row, end, b
    cdef floating *gates = <floating *> run.gates
    cdef floating *d_hidden = <floating *> run.d_hidden
    cdef floating *d_r = <floating *> run.d_r
    cdef const floating *grad_out = <const floating *> run.grad_out
    cdef const floating **out_grad = <const floating **> run.out_grad
    for step in range(run.step_begin, run.step_end):
        t = _backward_time(run, step)
        live = run.batch.batch_sizes[t]
        end = min(live, row_end)
        if end <= row_begin:
            continue
        row = run.batch.offsets[t] + row_begin   # the part's first packed row
        if run.projects:
            # [B5] d_hidden += dL/d(out) at t
            _add_output_grad(d_hidden, P, live, run.batch.perm, T, t, grad_out, run.out_width,
                             run.out_col)
            # [B4] d_r = d_hidden @ w_hr : (live, P) @ (P, H); keep d_hidden for d_w_hr
            memcpy(<floating *> run.d_hidden_all + row * P, d_hidden, live * P * sizeof(floating))
            matmul(run.level, NoTrans, NoTrans, live, H, P, d_hidden, P,
                   <const floating *> run.w_hr, H, <const floating *> run.w_hr_p, False, d_r, H)
        else:
            for b in range(row_begin, end):   # [B5], added by the cell backward
                out_grad[b] = grad_out + (run.batch.perm[b] * T + t) * run.out_width + run.out_col
        # [B3] gate and cell gradients, in place in gates[rows]
        _cell_backward(run.level, H, end - row_begin, gates + row * G,
                       <const floating *> run.cell_prev + row * H,
                       <const floating *> run.tanh_cell + row * H, d_r + row_begin * H,
                       out_grad + row_begin, <floating *> run.d_cell + row_begin * H,
                       <floating *> run.cell_out_all + row * H if run.projects else NULL)
        if run.level == PYLSTM_PORTABLE:
            _add_row_sums(run.level, gates + row * G, live, G, <floating *> run.d_bias)
        # [B2] d_hidden[rows] = d_gates @ w_hh : (rows, 4H) @ (4H, P)
        matmul(run.level, NoTrans, NoTrans, end - row_begin, P, G, gates + row * G, G,
               <const floating *> run.w_hh, P, w_hh_p, False, d_hidden + row_begin * P, P,
               prefer_rows=True)


cdef void _backward_steps_part(void *context, int part, int n_parts) noexcept nogil:
    """pylstm_parallel task: part ``part`` of ``n_parts`` of a run's rows."""
    cdef const _BackRun *run = <const _BackRun *> context
    cdef const void *w_hh_p = pylstm_replica(part, run.w_hh_p, run.w_hh_p_bytes)
    cdef Py_ssize_t row_begin = run.live * part // n_parts
    cdef Py_ssize_t row_end = run.live * (part + 1) // n_parts
    if run.is_double:
        _backward_steps(run, <const double *> w_hh_p, row_begin, row_end)
    else:
        _backward_steps(run, <const float *> w_hh_p, row_begin, row_end)


cdef int _direction_backward(
        Py_ssize_t B, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t P,
        bint reverse, int level, const floating *grad_out, Py_ssize_t out_width,
        Py_ssize_t out_col, const Py_ssize_t *perm,
        const Py_ssize_t *batch_sizes, const Py_ssize_t *offsets,
        const floating *w_ih, const floating *w_hh, const floating *w_hr,
        floating *d_hidden, floating *d_cell, floating *gates,
        const floating *cell_prev, const floating *tanh_cell,
        const floating *hidden_prev, const floating *packed_x,
        floating *d_w_ih, floating *d_w_hh, floating *d_bias, floating *d_w_hr,
        floating *d_packed_x, bint accumulate_dx,
        floating *d_cell_out, floating *d_hidden_all, floating *cell_out_all) noexcept nogil:
    """Backpropagate one direction through time.

    In: ``d_hidden`` (B, P) and ``d_cell`` (B, H) hold dL/dh_n, dL/dc_n;
    ``gates`` (N, 4H), ``cell_prev`` and ``tanh_cell`` (N, H), ``hidden_prev``
    (N, P) and ``packed_x`` (N, I) come from the training forward pass.
    Out: d_hidden, d_cell hold dL/dh0, dL/dc0; ``gates`` holds dL/d(pre-activations);
    weight gradients are overwritten; ``d_packed_x`` receives dL/d(packed input),
    added to what it holds if ``accumulate_dx`` (NULL: not computed).
    Returns 0, or -1 if a packing buffer could not be allocated.
    """
    cdef Py_ssize_t G = 4 * H
    cdef Py_ssize_t N = offsets[T]
    cdef Py_ssize_t step, run_end, t
    cdef bint projects = w_hr != NULL
    cdef floating *d_r = d_cell_out if projects else d_hidden
    cdef bint chunk_ends
    cdef int parts
    cdef _BackRun run    # the steps' shared arguments
    # The weight gradients and d_packed_x are taken a chunk of steps at a
    # time, right after the loop has made the chunk's d_gates, while they are
    # in cache; a pass after the loop read them, and a transposed copy, back
    # from memory. Every chunk reads and writes the weight gradients, so when
    # those do not stay in cache the whole loop is one chunk. Measured in
    # docs/kernel.md: 256 rows beat 128 and 512 rows; with 8 MiB of weight
    # gradients (H = I = 512) one chunk beat every chunk size.
    cdef Py_ssize_t chunk_rows = (
        _CHUNK_ROWS if G * (P + I) * sizeof(floating) <= 2 * _L2_BYTES else max(N, 1))
    cdef bint first_chunk = True
    cdef Py_ssize_t pending = 0 if reverse else N   # where the rows not yet taken end
    cdef Py_ssize_t lo, hi, max_rows
    # Right-hand operands packed for the SIMD GEMM (level > 0)
    cdef floating *w_hh_p = NULL      # w_hh (4H, P)       for [B2] per step
    cdef floating *w_hr_p = NULL      # w_hr (P, H)        for [B4] per step
    cdef floating *w_ih_p = NULL      # w_ih (4H, I)       for [B1] d_packed_x
    cdef floating *x_p = NULL         # a chunk of packed_x     for [B1] d_w_ih
    cdef floating *h_p = NULL         # a chunk of hidden_prev  for [B2] d_w_hh
    cdef floating *r_p = NULL         # a chunk of cell_out_all for [B4] d_w_hr
    cdef floating *left_t = NULL      # a chunk of d_gates.T or d_hidden_all.T
    # (B,) where row b's dL/d(out) at the step lies: without a projection the
    # cell backward adds it to d_hidden as it reads it, not in a pass of its own
    cdef const floating **out_grad = NULL
    cdef Py_ssize_t b
    cdef int status = 0
    if level != PYLSTM_PORTABLE:
        w_hh_p = pack_operand(level, NoTrans, G, P, w_hh, P)
        if d_packed_x != NULL:
            w_ih_p = pack_operand(level, NoTrans, G, I, w_ih, I)
        # a chunk ends with the first step (at most B rows) that brings it to chunk_rows
        max_rows = min(N, chunk_rows + B - 1)
        left_t = <floating *> aligned_malloc(max_rows * max(G, P) * sizeof(floating))
        x_p = <floating *> packed_buffer(level, floating is double, max_rows, I)
        h_p = <floating *> packed_buffer(level, floating is double, max_rows, P)
        if projects:
            w_hr_p = pack_operand(level, NoTrans, P, H, w_hr, H)
            r_p = <floating *> packed_buffer(level, floating is double, max_rows, H)
        if w_hh_p == NULL or (d_packed_x != NULL and w_ih_p == NULL) or left_t == NULL \
                or x_p == NULL or h_p == NULL \
                or (projects and (w_hr_p == NULL or r_p == NULL)):
            status = -1
    if not projects:
        out_grad = <const floating **> malloc(max(B, 1) * sizeof(floating *))
        if out_grad == NULL:
            status = -1
    run.batch = _Batch(T, reverse, perm, batch_sizes, offsets)
    run.level, run.projects, run.is_double = level, projects, floating is double
    run.H, run.P, run.G, run.out_width, run.out_col = H, P, G, out_width, out_col
    run.grad_out, run.cell_prev, run.tanh_cell = grad_out, cell_prev, tanh_cell
    run.w_hh, run.w_hh_p, run.w_hr, run.w_hr_p = w_hh, w_hh_p, w_hr, w_hr_p
    run.w_hh_p_bytes = pylstm_packed_b_size(level, floating is double, G, P) * sizeof(floating) \
        if w_hh_p != NULL else 0
    run.gates, run.d_hidden, run.d_cell, run.d_r = gates, d_hidden, d_cell, d_r
    run.d_hidden_all, run.cell_out_all, run.d_bias = d_hidden_all, cell_out_all, d_bias
    run.out_grad = <const void **> out_grad
    pylstm_new_replica_epoch()     # w_hh_p is packed afresh: so are the parts' copies
    if status == 0:
        # [B3] d_bias = d_gates.sum(axis=0), the same for b_ih and b_hh: summed
        # by each chunk's transpose below (SIMD levels: from its registers,
        # each chunk's rows in order), or step by step (BLAS level)
        memset(d_bias, 0, G * sizeof(floating))
        step = 0
        while step < T:
            # A run: the steps from here that keep the same live rows, up to
            # the end of a chunk of weight gradients (taken after the run).
            run.live = batch_sizes[_backward_time(&run, step)]
            run_end = step
            while True:
                t = _backward_time(&run, run_end)
                # The steps taken since the last chunk hold rows [lo, hi): backward
                # runs down the rows of the forward direction, up those of the reverse.
                lo = pending if reverse else offsets[t]
                hi = offsets[t + 1] if reverse else pending
                run_end += 1
                chunk_ends = hi - lo >= chunk_rows or (run_end == T and hi > lo)
                if chunk_ends or run_end == T \
                        or batch_sizes[_backward_time(&run, run_end)] != run.live:
                    break
            run.step_begin, run.step_end = step, run_end
            parts = 1
            if not projects and level != PYLSTM_PORTABLE and run_end - step > 1:
                parts = pylstm_row_parts(level, run.live, H, P, sizeof(floating))
            if parts > 1:
                if pylstm_parallel(parts, _backward_steps_part, &run) > 1:
                    pylstm_count_row_run()
            else:
                _backward_steps(&run, w_hh_p, 0, run.live)
            step = run_end
            if chunk_ends:
                # [B1] d_w_ih += d_gates.T @ packed_x; [B2] d_w_hh += d_gates.T @ hidden_prev
                if level != PYLSTM_PORTABLE:
                    transpose_into(level, hi - lo, G, gates + lo * G, G, left_t, d_bias)
                _add_chunk_grad(level, G, I, hi - lo, gates + lo * G, left_t, packed_x + lo * I,
                                x_p, not first_chunk, d_w_ih)
                _add_chunk_grad(level, G, P, hi - lo, gates + lo * G, left_t,
                                hidden_prev + lo * P, h_p, not first_chunk, d_w_hh)
                if projects:
                    # [B4] d_w_hr += d_hidden_all.T @ cell_out_all
                    if level != PYLSTM_PORTABLE:
                        transpose_into(level, hi - lo, P, d_hidden_all + lo * P, P, left_t)
                    _add_chunk_grad(level, P, H, hi - lo, d_hidden_all + lo * P, left_t,
                                    cell_out_all + lo * H, r_p, not first_chunk, d_w_hr)
                if d_packed_x != NULL:
                    # [B1] d_packed_x[lo:hi] (+)= d_gates[lo:hi] @ w_ih : (rows, 4H) @ (4H, I)
                    matmul(level, NoTrans, NoTrans, hi - lo, I, G, gates + lo * G, G, w_ih, I,
                           w_ih_p, accumulate_dx, d_packed_x + lo * I, I)
                first_chunk = False
                pending = hi if reverse else lo
        if first_chunk:  # no rows: the weight gradients are empty sums
            memset(d_w_ih, 0, G * I * sizeof(floating))
            memset(d_w_hh, 0, G * P * sizeof(floating))
            if projects:
                memset(d_w_hr, 0, P * H * sizeof(floating))
    free(w_hh_p)
    free(w_hr_p)
    free(w_ih_p)
    free(x_p)
    free(h_p)
    free(r_p)
    free(left_t)
    free(out_grad)
    return status


# ---------------------------------------------------------------------------
# Python-facing entry points: take memoryviews, hold the GIL only to read
# pointers, run the whole loop in one nogil block.
# ---------------------------------------------------------------------------

cdef inline floating *_ptr_or_null(floating[:, ::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0, 0]


def simd_level():
    """The SIMD level in use: 0 portable (BLAS), 1 AVX2+FMA, 2 AVX-512; PYLSTM_SIMD caps it."""
    return pylstm_simd_level()


def set_num_threads(int n):
    """Threads the kernel may split one step or product across (>= 1)."""
    pylstm_set_num_threads(n)


def get_num_threads():
    """Threads the kernel may use; see set_num_threads."""
    return pylstm_get_num_threads()


def _parts_taken_over():
    """Parts of parallel regions that the calling thread ran because no worker
    had claimed them yet (cumulative; for tests)."""
    return pylstm_parts_taken_over()


def _row_runs():
    """Runs of steps (forward or backward) whose rows were split across threads
    (cumulative; for tests)."""
    return pylstm_row_runs_so_far()


def cpu_level():
    """The highest SIMD level this CPU supports (ignores PYLSTM_SIMD)."""
    return pylstm_cpu_level()


def l2_cache_size():
    """Bytes of one core's L2 cache as the C library reports it (0 if unknown)."""
    return max(sysconf(_SC_LEVEL2_CACHE_SIZE), 0)


cdef Py_ssize_t _L2_BYTES = l2_cache_size() or (1 << 20)   # bytes; 1 MiB if unknown
# The share of one core's L2 that read-only weights may fill and still stay
# there from step to step: the layer's fusion rule and the C thread splits
# (pylstm_l2_budget) both use this one figure.
L2_BUDGET = 3 * _L2_BYTES // 4
pylstm_set_l2_budget(L2_BUDGET)


def pack_weights(const float[:, ::1] w_hh, const float[:, ::1] w_ih, int hidden_size,
                 int level):
    """Pack w_hh (4H, P), and w_ih (4H, I) unless None, into the SIMD step's panels.

    Returns None on the portable path (level 0).
    """
    cdef int P = w_hh.shape[1]
    cdef int I = 0 if w_ih is None else w_ih.shape[1]
    cdef long size = pylstm_packed_size(level, hidden_size, P, I)
    if size == 0:
        return None
    packed = aligned_empty(size, np.float32)
    cdef float[::1] packed_view = packed
    cdef const float *w_ih_ptr = NULL
    if w_ih is not None:
        w_ih_ptr = &w_ih[0, 0]
    with nogil:
        pylstm_pack_weights(level, hidden_size, P, I, &w_hh[0, 0], w_ih_ptr, &packed_view[0])
    return packed


def pack_transposed(const floating[:, ::1] w, int level):
    """``w.T`` packed as the SIMD GEMM's right-hand operand at ``level`` (None at level 0).

    For the weight cache: [F1], [F2] and [F4] multiply by w_ih.T, w_hh.T and
    w_hr.T, which ``direction_forward`` would otherwise pack on every call.
    """
    if level == PYLSTM_PORTABLE:
        return None
    cdef int n = w.shape[0], k = w.shape[1]
    dtype = np.float64 if floating is double else np.float32
    packed = aligned_empty(pylstm_packed_b_size(level, floating is double, k, n), dtype)
    cdef floating[::1] view = packed
    with nogil:
        pack_operand_into(level, Trans, k, n, &w[0, 0], k, &view[0])
    return packed


def pack_products(w_ih, w_hh, w_hr, int level, bint fuse_input):
    """(w_ih.T, w_hh.T, w_hr.T) packed by ``pack_transposed`` for the products
    a sequence at ``level`` runs through the GEMM, None for the others (and
    for all on the portable level): what ``direction_forward`` takes as
    ``packed_weights``. w_hr is None without a projection."""
    cdef bint gemm[3]
    _sequence_plan(w_hh.dtype == np.float32, level, fuse_input, w_hr is not None, gemm)
    return tuple(pack_transposed(w, level) if needed else None
                 for w, needed in zip((w_ih, w_hh, w_hr), (gemm[0], gemm[1], gemm[2])))


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` whose data starts on a cache line.

    For the buffers the SIMD code streams with full-vector loads and stores
    (packed weights, gates, states): see CACHE_LINE in _blas.pxd. NumPy
    allocates the bytes (so tracemalloc and NumPy's allocator hooks see them);
    the result is a C-contiguous view of them at the first cache line. Built
    with the C API: inference calls this a few times per call.
    """
    cdef cnp.dtype descr = np.dtype(dtype)
    if not descr.isnative or descr.type_num > cnp.NPY_CLONGDOUBLE:
        raise ValueError(f"aligned_empty takes a built-in, native-order dtype, got {descr}")
    if isinstance(shape, int):
        shape = (shape,)
    cdef int ndim = len(shape)
    if ndim > 3:
        raise ValueError(f"aligned_empty takes up to 3 dimensions, got {ndim}")
    cdef cnp.npy_intp dims[3]
    cdef cnp.npy_intp n_bytes = descr.itemsize
    cdef int d
    for d in range(ndim):
        dims[d] = shape[d]
        if dims[d] < 0:
            raise ValueError(f"negative dimensions are not allowed, got {tuple(shape)}")
        if dims[d] and n_bytes > (PY_SSIZE_T_MAX - CACHE_LINE) // dims[d]:
            raise MemoryError(f"an array of shape {tuple(shape)} does not fit in memory")
        n_bytes *= dims[d]
    cdef cnp.npy_intp raw_size = n_bytes + CACHE_LINE
    raw = cnp.PyArray_EMPTY(1, &raw_size, cnp.NPY_UINT8, 0)
    cdef char *data = <char *> cnp.PyArray_DATA(raw)
    data += (CACHE_LINE - (<size_t> data) % CACHE_LINE) % CACHE_LINE
    view = cnp.PyArray_SimpleNewFromData(ndim, dims, descr.type_num, data)
    cnp.set_array_base(view, raw)
    return view


def matmul_rows(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out):
    """``out[:] = a @ b`` (m, k) @ (k, n), each row the same bits whatever m is.

    For the estimators' heads, whose predictions must not depend on which
    other rows share the call: numpy's matmul goes through BLAS, whose
    blocking (and gemv for one column) changes with the row count. At a SIMD
    level this is the reproducible GEMM; the portable level uses BLAS, as
    its LSTM steps do.
    """
    if b.shape[0] != a.shape[1] or out.shape[0] != a.shape[0] or out.shape[1] != b.shape[1] \
            or 0 in (a.shape[0], a.shape[1], b.shape[1]) \
            or max(a.shape[0], a.shape[1], b.shape[1]) > INT_MAX:
        raise ValueError(f"matmul_rows: cannot multiply {(a.shape[0], a.shape[1])} by "
                         f"{(b.shape[0], b.shape[1])} into {(out.shape[0], out.shape[1])}")
    cdef int m = a.shape[0], k = a.shape[1], n = b.shape[1]
    cdef int level = pylstm_simd_level()
    cdef floating *packed = NULL
    if level != PYLSTM_PORTABLE:
        packed = pack_operand(level, NoTrans, k, n, &b[0, 0], n)
        if packed == NULL:
            raise MemoryError()
    with nogil:
        matmul(level, NoTrans, NoTrans, m, n, k, &a[0, 0], k, &b[0, 0], n, packed, False,
               &out[0, 0], n)
    free(packed)


def adam_update(floating[::1] param, const floating[::1] grad, floating[::1] first,
                floating[::1] second, double rate, double beta_1, double beta_2,
                double epsilon):
    """One Adam update of ``param`` in place (for ``_optimizers.Adam``; lengths checked here).

    ``rate`` already holds the bias correction; the moments are updated in place.
    """
    cdef long n = param.shape[0]
    cdef int level = pylstm_simd_level()
    # the scalars as NumPy rounds them for the vector's dtype
    cdef floating b1 = <floating> beta_1, b2 = <floating> beta_2
    if grad.shape[0] != n or first.shape[0] != n or second.shape[0] != n:
        raise ValueError(f"param, grad and the moments must have the same length, got "
                         f"{n}, {grad.shape[0]}, {first.shape[0]}, {second.shape[0]}")
    if n == 0:
        return
    with nogil:
        if floating is float:
            pylstm_adam_update_f32(level, n, &param[0], &grad[0], &first[0], &second[0],
                                   <float> rate, b1, 1 - b1, b2, 1 - b2, <float> epsilon)
        else:
            pylstm_adam_update_f64(level, n, &param[0], &grad[0], &first[0], &second[0],
                                   rate, b1, 1 - b1, b2, 1 - b2, epsilon)


def sgd_update(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
               double rate, double momentum, bint nesterov):
    """One SGD-with-momentum update of ``param`` and ``velocity`` in place (for ``_optimizers.SGD``)."""
    cdef long n = param.shape[0]
    cdef int level = pylstm_simd_level()
    if grad.shape[0] != n or velocity.shape[0] != n:
        raise ValueError(f"param, grad and velocity must have the same length, got "
                         f"{n}, {grad.shape[0]}, {velocity.shape[0]}")
    if n == 0:
        return
    with nogil:
        if floating is float:
            pylstm_sgd_update_f32(level, n, &param[0], &grad[0], &velocity[0], <float> rate,
                                  <float> momentum, nesterov)
        else:
            pylstm_sgd_update_f64(level, n, &param[0], &grad[0], &velocity[0], rate,
                                  momentum, nesterov)


def vector_activation(int level, int which, const floating[::1] x, floating[::1] out):
    """out = sigmoid(x) (which=0) or tanh(x) (which=1) with the vector code of ``level``; for tests.

    float32: the SIMD step's activations (levels 1, 2); float64: the cell
    update's (every level).
    """
    if x.shape[0] != out.shape[0] or x.shape[0] == 0:
        raise ValueError("x and out must be non-empty and of the same length")
    if level > pylstm_cpu_level():
        raise ValueError(f"SIMD level {level} is not available")
    if floating is double:
        pylstm_activations_f64(level, which, &x[0], &out[0], x.shape[0])
    elif pylstm_vector_activation(level, which, &x[0], &out[0], x.shape[0]) != 0:
        raise ValueError(f"SIMD level {level} is not available")


def direction_forward(const floating[:, :, ::1] x,
                      const Py_ssize_t[::1] perm,
                      const Py_ssize_t[::1] batch_sizes,
                      const Py_ssize_t[::1] offsets,
                      const floating[:, ::1] w_ih,
                      const floating[:, ::1] w_hh,
                      const floating[::1] bias,
                      const floating[:, ::1] w_hr,
                      const float[::1] panels,
                      tuple packed_weights,
                      int level,
                      bint fuse_input,
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
                      floating[:, ::1] hidden_scratch,
                      floating[:, ::1] hidden_prev,
                      floating[:, ::1] cell_prev,
                      floating[:, ::1] tanh_cell):
    """Forward one layer direction; see the module docstring for shapes.

    x (B, T, I) batch-first; hidden (B, P) and cell (B, H) hold the sorted
    initial state and receive the final state; out (B, T, width) receives
    columns out_col:out_col+P. packed_x (rows, I) and gates (rows, 4H) are
    workspaces of at least ``chunk_steps * B`` rows, or all N rows (with
    x_is_packed, packed_x already filled) for training. ``panels`` comes from
    ``pack_weights`` at the same ``level``, with w_ih included iff
    ``fuse_input`` (float32 only; None for the portable path).
    ``packed_weights`` is (w_ih.T, w_hh.T, w_hr.T) from ``pack_products`` at
    ``level``, each None where this call should pack it. cell_out (B, H)
    is needed when projecting; hidden_scratch (B, P) for inference;
    hidden_prev (N, P), cell_prev and tanh_cell (N, H) only for training.
    """
    cdef Py_ssize_t B = x.shape[0]
    cdef Py_ssize_t T = x.shape[1]
    cdef Py_ssize_t I = w_ih.shape[1]
    cdef Py_ssize_t H = cell.shape[1]
    cdef Py_ssize_t P = hidden.shape[1]
    cdef const floating *w_hr_ptr = NULL
    if w_hr is not None and w_hr.shape[0] > 0:
        w_hr_ptr = &w_hr[0, 0]
    cdef const float *panels_ptr = NULL
    if floating is float and panels is not None:
        panels_ptr = &panels[0]
    elif floating is float:
        level = PYLSTM_PORTABLE     # the float32 SIMD step needs its panels
    cdef floating *hidden_prev_ptr = _ptr_or_null(hidden_prev)
    cdef floating *cell_prev_ptr = _ptr_or_null(cell_prev)
    cdef floating *cell_out_ptr = _ptr_or_null(cell_out)
    cdef floating *scratch_ptr = _ptr_or_null(hidden_scratch)
    cdef floating *tanh_cell_ptr = _ptr_or_null(tanh_cell)
    cdef const floating *packed_ptrs[3]
    cdef const floating[::1] packed
    cdef int k
    for k in range(3):
        packed_ptrs[k] = NULL
        if packed_weights[k] is not None:
            packed = packed_weights[k]
            packed_ptrs[k] = &packed[0]
    cdef int status
    with nogil:
        status = _direction_forward(B, T, I, H, P, reverse, chunk_steps, level, fuse_input,
                           &x[0, 0, 0], &perm[0], &batch_sizes[0], &offsets[0],
                           &w_ih[0, 0], &w_hh[0, 0], &bias[0], w_hr_ptr, panels_ptr,
                           packed_ptrs,
                           &hidden[0, 0], &cell[0, 0],
                           &out[0, 0, 0], out.shape[2], out_col,
                           &packed_x[0, 0], x_is_packed, &gates[0, 0],
                           cell_out_ptr, scratch_ptr, hidden_prev_ptr, cell_prev_ptr,
                           tanh_cell_ptr)
    if status != 0:
        raise MemoryError("out of memory packing the LSTM weights")


def direction_backward(const floating[:, :, ::1] grad_out,
                       Py_ssize_t out_col,
                       bint reverse,
                       int level,
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
                       const floating[:, ::1] tanh_cell,
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

    grad_out (B, T, width) is dL/d(out); gates (N, 4H), cell_prev and
    tanh_cell (N, H), hidden_prev (N, P), packed_x (N, I) come from the
    training forward pass.
    d_cell_out (B, H), d_hidden_all (N, P), cell_out_all (N, H) are
    workspaces used only when projecting (w_hr non-empty). d_packed_x None:
    dL/d(input) is not computed.
    """
    cdef Py_ssize_t B = grad_out.shape[0]
    cdef Py_ssize_t T = grad_out.shape[1]
    cdef Py_ssize_t I = w_ih.shape[1]
    cdef Py_ssize_t H = d_cell.shape[1]
    cdef Py_ssize_t P = d_hidden.shape[1]
    cdef const floating *w_hr_ptr = NULL
    if w_hr is not None and w_hr.shape[0] > 0:
        w_hr_ptr = &w_hr[0, 0]
    cdef floating *d_w_hr_ptr = _ptr_or_null(d_w_hr)
    cdef floating *d_cell_out_ptr = _ptr_or_null(d_cell_out)
    cdef floating *d_hidden_all_ptr = _ptr_or_null(d_hidden_all)
    cdef floating *cell_out_all_ptr = _ptr_or_null(cell_out_all)
    cdef floating *d_packed_x_ptr = _ptr_or_null(d_packed_x)
    cdef int status
    with nogil:
        status = _direction_backward(B, T, I, H, P, reverse, level, &grad_out[0, 0, 0],
                            grad_out.shape[2], out_col,
                            &perm[0], &batch_sizes[0], &offsets[0],
                            &w_ih[0, 0], &w_hh[0, 0], w_hr_ptr,
                            &d_hidden[0, 0], &d_cell[0, 0], &gates[0, 0],
                            &cell_prev[0, 0], &tanh_cell[0, 0], &hidden_prev[0, 0],
                            &packed_x[0, 0],
                            &d_w_ih[0, 0], &d_w_hh[0, 0], &d_bias[0], d_w_hr_ptr,
                            d_packed_x_ptr, accumulate_dx,
                            d_cell_out_ptr, d_hidden_all_ptr, cell_out_all_ptr)
    if status != 0:
        raise MemoryError("out of memory packing the operands of the backward pass")


def gather_inputs(const floating[:, :, ::1] x, const Py_ssize_t[::1] perm,
                  const Py_ssize_t[::1] batch_sizes, floating[:, ::1] packed):
    """packed (N, I)[offsets[t] + b] = x[perm[b], t] for all packed rows."""
    with nogil:
        _gather_inputs(&x[0, 0, 0], x.shape[1], x.shape[2], &perm[0],
                       &batch_sizes[0], 0, x.shape[1], &packed[0, 0])


def zero_past_ends(floating[:, :, ::1] out, const Py_ssize_t[::1] lengths):
    """out[b, lengths[b]:] = 0 for each sequence b: its steps past its end."""
    cdef Py_ssize_t T = out.shape[1]
    cdef Py_ssize_t W = out.shape[2]
    cdef Py_ssize_t b
    with nogil:
        for b in range(out.shape[0]):
            memset(&out[b, 0, 0] + lengths[b] * W, 0, (T - lengths[b]) * W * sizeof(floating))


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


# ---------------------------------------------------------------------------
# Checks the Python layer runs before calling in (it validates; this is only
# a fast loop for it, with no temporary array)
# ---------------------------------------------------------------------------

cdef bint _finite(const floating *values, Py_ssize_t n) noexcept nogil:
    """np.isfinite(values[:n]).all()."""
    if floating is float:
        return pylstm_all_finite_f32(values, n)
    else:
        return pylstm_all_finite_f64(values, n)


def all_finite(const floating[::1] values):
    """np.isfinite(values).all(), without allocating a boolean array."""
    cdef bint finite
    with nogil:
        finite = _finite(&values[0], values.shape[0]) if values.shape[0] else True
    return finite


# ---------------------------------------------------------------------------
# One time step of a unidirectional stack, for streaming inference
# ---------------------------------------------------------------------------

cdef struct _LayerWeights:
    const void *w_ih        # (4H, I_k)
    const void *w_hh        # (4H, P)
    const void *bias        # (4H,) = b_ih + b_hh
    const void *w_hr        # (P, H) or NULL
    const float *panels     # packed [w_hh | w_ih] at the plan's SIMD level, or NULL
    int width               # I_k, the layer's input size


cdef inline bint _ready(object a, int typenum, int ndim):
    """An exact ndarray the kernel can read as it is: dtype, byte order, dims, C order, aligned."""
    if not cnp.PyArray_CheckExact(a):
        return False
    cdef cnp.ndarray array = <cnp.ndarray> a
    return (cnp.PyArray_TYPE(array) == typenum and cnp.PyArray_ISNOTSWAPPED(array)
            and cnp.PyArray_NDIM(array) == ndim
            and cnp.PyArray_CHKFLAGS(array, cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED))


cdef inline bint _same_shape(object a, const cnp.npy_intp *dims):
    cdef const cnp.npy_intp *shape = cnp.PyArray_DIMS(<cnp.ndarray> a)
    return shape[0] == dims[0] and shape[1] == dims[1] and shape[2] == dims[2]


cdef size_t _address(object array):
    """Address of a C-contiguous array's data (it is kept alive by its owner), 0 for None."""
    return 0 if array is None else array.__array_interface__["data"][0]


cdef class _Plan:
    """What the fast paths' plans share: the layer's sizes, dtype and SIMD level."""
    cdef readonly int level, num_layers, input_size, hidden_size, output_size
    cdef readonly object dtype
    cdef int _typenum
    cdef Py_ssize_t _max_batch   # keeps 4H * B, and every size the kernel computes, in a C int

    cdef _init_sizes(self, int num_layers, int input_size, int hidden_size, int output_size,
                     int level, dtype):
        self.level = level
        self.num_layers = num_layers
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.dtype = dtype
        self._typenum = cnp.NPY_FLOAT32 if dtype == np.float32 else cnp.NPY_FLOAT64
        self._max_batch = INT_MAX // (4 * hidden_size)


cdef class StepPlan(_Plan):
    """Weights of every layer of a unidirectional LSTM, ready for ``run``.

    Keeps the arrays alive and their addresses, so a streaming step acquires
    no buffer for the weights: per layer the fused SIMD panels [w_hh | w_ih]
    (float32 at a SIMD level) or the plain weights for the BLAS path, and the
    summed bias b_ih + b_hh. The arrays must not be resized while the plan lives.
    """
    cdef list _layers
    cdef _LayerWeights *_weights

    def __cinit__(self, list layers, int input_size, int hidden_size, int output_size,
                  int level, dtype):
        """layers: per layer a tuple (w_ih, w_hh, bias, w_hr or None, panels or None)."""
        self._init_sizes(len(layers), input_size, hidden_size, output_size, level, dtype)
        self._layers = layers
        self._weights = <_LayerWeights *> PyMem_Malloc(len(layers) * sizeof(_LayerWeights))
        if self._weights == NULL:
            raise MemoryError()
        for k, (w_ih, w_hh, bias, w_hr, panels) in enumerate(layers):
            self._weights[k].w_ih = <const void *> _address(w_ih)
            self._weights[k].w_hh = <const void *> _address(w_hh)
            self._weights[k].bias = <const void *> _address(bias)
            self._weights[k].w_hr = <const void *> _address(w_hr)
            self._weights[k].panels = <const float *> _address(panels)
            self._weights[k].width = w_ih.shape[1]

    def __dealloc__(self):
        PyMem_Free(self._weights)

    @property
    def stale(self):
        """True when PYLSTM_SIMD now asks for another level than the plan was built for."""
        return self._stale()

    cdef inline bint _stale(self):
        return self._typenum == cnp.NPY_FLOAT32 and self.level != pylstm_simd_level()

    def step(self, x, state):
        """``(y, (h_new, c_new))``: one step from ``state = (h, c)`` with input ``x``.

        The streaming fast path: returns None, having done nothing, unless
        the plan is not stale and ``x`` (B, I), ``h`` (L, B, P) and ``c``
        (L, B, H) are exact ndarrays of the plan's dtype, native byte order,
        C-contiguous and aligned; the caller then rebuilds the plan or converts
        the inputs or rejects them with a clear error. Checks
        finiteness here, on the buffers it already holds, and raises
        ValueError naming the first input that is not finite (nothing is
        computed then). New arrays are returned; the inputs are not modified.
        """
        if type(state) is not tuple or len(<tuple> state) != 2:
            return None
        h, c = <tuple> state
        if not _ready(x, self._typenum, 2) or self._stale():
            return None
        cdef cnp.npy_intp B = cnp.PyArray_DIMS(x)[0]
        if B < 1 or cnp.PyArray_DIMS(x)[1] != self.input_size or B > self._max_batch:
            return None
        cdef cnp.npy_intp h_dims[3]
        cdef cnp.npy_intp c_dims[3]
        h_dims[0] = c_dims[0] = self.num_layers
        h_dims[1] = c_dims[1] = B
        h_dims[2] = self.output_size
        c_dims[2] = self.hidden_size
        if not (_ready(h, self._typenum, 3) and _ready(c, self._typenum, 3)
                and _same_shape(h, h_dims) and _same_shape(c, c_dims)):
            return None
        h_new = cnp.PyArray_EMPTY(3, h_dims, self._typenum, 0)
        c_new = cnp.PyArray_EMPTY(3, c_dims, self._typenum, 0)
        cdef int status
        if self._typenum == cnp.NPY_FLOAT32:
            status = self._run(<const float *> cnp.PyArray_DATA(x), <const float *> cnp.PyArray_DATA(h),
                               <const float *> cnp.PyArray_DATA(c), <float *> cnp.PyArray_DATA(h_new),
                               <float *> cnp.PyArray_DATA(c_new), B)
        else:
            status = self._run(<const double *> cnp.PyArray_DATA(x), <const double *> cnp.PyArray_DATA(h),
                               <const double *> cnp.PyArray_DATA(c), <double *> cnp.PyArray_DATA(h_new),
                               <double *> cnp.PyArray_DATA(c_new), B)
        if status == -1:
            raise MemoryError()
        if status:
            name = ("x_t", "state h", "state c")[status - 1]
            raise ValueError(f"{name} must be finite, but contains NaN or infinity")
        # the top layer's h as a view: the sequence protocol skips NumPy's index parsing
        return PySequence_GetItem(h_new, self.num_layers - 1), (h_new, c_new)

    cdef int _run(self, const floating *x, const floating *h, const floating *c,
                  floating *h_new, floating *c_new, Py_ssize_t B) except -2:
        """One step of every layer; 1, 2 or 3 if x, h or c is not finite, -1 out of memory."""
        cdef Py_ssize_t L = self.num_layers
        cdef int H = self.hidden_size
        cdef int P = self.output_size
        cdef int G = 4 * H
        cdef int layer, width
        cdef bint simd = floating is float and self.level != PYLSTM_PORTABLE
        cdef bint projects = self._weights[0].w_hr != NULL
        cdef _LayerWeights *weights
        cdef const floating *layer_in
        cdef floating *r
        # workspaces: gates for the BLAS path, o * tanh(c) before a projection
        cdef floating *gates = NULL
        cdef floating *cell_out = NULL
        cdef int status = 0
        with nogil:
            if not _finite(x, B * self.input_size):
                status = 1
            elif not _finite(h, L * B * P):
                status = 2
            elif not _finite(c, L * B * H):
                status = 3
            else:
                if not simd:
                    gates = <floating *> malloc(B * G * sizeof(floating))
                if projects:
                    cell_out = <floating *> malloc(B * H * sizeof(floating))
                if (not simd and gates == NULL) or (projects and cell_out == NULL):
                    status = -1
            for layer in range(L if status == 0 else 0):
                weights = &self._weights[layer]
                width = weights.width
                layer_in = x if layer == 0 else h_new + (layer - 1) * B * P
                r = cell_out if projects else h_new + layer * B * P
                memcpy(c_new + layer * B * H, c + layer * B * H, B * H * sizeof(floating))
                if simd:
                    # [F1]+[F2]+[F3]: z = h @ w_hh.T + x @ w_ih.T + bias, cell update
                    pylstm_step(self.level, B, H, P, width, weights.panels,
                                <const float *> weights.bias, <const float *> h + layer * B * P, P,
                                <const float *> layer_in, width, NULL, G, 0,
                                <float *> c_new + layer * B * H, H, <float *> r, H, NULL, 0,
                                NULL, 0, NULL, NULL, NULL, NULL)
                else:
                    # [F1] gates = x @ w_ih.T : (B, I) @ (I, 4H)
                    gemm(NoTrans, Trans, B, G, width, 1, layer_in, width,
                         <const floating *> weights.w_ih, width, 0, gates, G)
                    # [F2] gates += h @ w_hh.T : (B, P) @ (P, 4H)
                    gemm(NoTrans, Trans, B, G, P, 1, h + layer * B * P, P,
                         <const floating *> weights.w_hh, P, 1, gates, G)
                    # [F3]
                    _cell_forward(self.level, H, B, gates, <const floating *> weights.bias,
                                  c_new + layer * B * H, r, NULL)
                if projects:
                    # [F4] h = r @ w_hr.T : (B, H) @ (H, P)
                    gemm(NoTrans, Trans, B, P, H, 1, r, H, <const floating *> weights.w_hr, H,
                         0, h_new + layer * B * P, P)
            free(gates)
            free(cell_out)
        return status


# ---------------------------------------------------------------------------
# Whole sequences without lengths, for inference calls
# ---------------------------------------------------------------------------

cdef struct _DirectionWeights:
    const void *w_ih        # (4H, I_k)
    const void *w_hh        # (4H, P)
    const void *bias        # (4H,) = b_ih + b_hh
    const void *w_hr        # (P, H) or NULL
    const float *panels     # pack_weights at the plan's level, or NULL
    const void *packed[3]   # pack_products: w_ih.T, w_hh.T, w_hr.T, each or NULL
    bint ready


cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr)

# tracemalloc counts the workspaces a call mallocs, as it counts NumPy's arrays
# (which report themselves in domain 389047): a memory profile must see them.
cdef enum:
    TRACE_DOMAIN = 0x70796c73   # "pyls"


cdef void *_traced_malloc(size_t size):
    """aligned_malloc, reported to tracemalloc (release with _traced_free); NULL when out of memory."""
    cdef void *p = aligned_malloc(size)
    if p != NULL:
        PyTraceMalloc_Track(TRACE_DOMAIN, <size_t> p, size)
    return p


cdef void _traced_free(void *p):
    if p != NULL:
        PyTraceMalloc_Untrack(TRACE_DOMAIN, <size_t> p)
        free(p)


cdef inline Py_ssize_t _chunk_steps(Py_ssize_t T, Py_ssize_t B, Py_ssize_t chunk_rows,
                                    Py_ssize_t min_chunk_steps) noexcept nogil:
    """min(T, max(min_chunk_steps, chunk_rows // B)): steps per chunk of an inference call."""
    return min(T, max(min_chunk_steps, chunk_rows // B))


def inference_chunk_steps(Py_ssize_t T, Py_ssize_t B, Py_ssize_t chunk_rows,
                          Py_ssize_t min_chunk_steps):
    """Steps per chunk of an inference call, for the general path (SequencePlan uses the same rule)."""
    return _chunk_steps(T, B, chunk_rows, min_chunk_steps)


cdef class SequencePlan(_Plan):
    """Every layer direction's weights as ``direction_forward`` takes them, with their addresses.

    The sequence call's fast path, as StepPlan is step()'s: the general path
    spends ~10 us of Python per call (checks, packing tables, ~20 buffer
    acquisitions per direction) before the kernel runs, a third of a
    10-step call. Weights are added lazily, through the ``build`` callback of
    ``forward``, once per (layer, direction, fused input) that the batch sizes
    seen need. The arrays must not be resized while the plan lives.
    """
    cdef readonly int num_directions
    cdef Py_ssize_t _widest_input, _chunk_rows, _min_chunk_steps
    cdef Py_ssize_t *_fuse_from  # (L,) the batch size from which a layer fuses its input
    cdef _DirectionWeights *_weights   # (L * D * 2,) [(layer * D + direction) * 2 + fused]
    cdef list _kept              # the arrays behind _weights' addresses

    def __cinit__(self, int num_layers, int num_directions, int input_size, int hidden_size,
                  int output_size, int widest_input, int level, dtype, list fuse_from,
                  Py_ssize_t chunk_rows, Py_ssize_t min_chunk_steps):
        """widest_input: the largest layer input size; fuse_from: per layer, the smallest
        batch whose step fuses the input term."""
        self._init_sizes(num_layers, input_size, hidden_size, output_size, level, dtype)
        self.num_directions = num_directions
        self._widest_input = widest_input
        self._chunk_rows = chunk_rows
        self._min_chunk_steps = min_chunk_steps
        self._kept = []
        self._fuse_from = <Py_ssize_t *> PyMem_Malloc(num_layers * sizeof(Py_ssize_t))
        self._weights = <_DirectionWeights *> PyMem_Malloc(
            2 * num_layers * num_directions * sizeof(_DirectionWeights))
        if self._fuse_from == NULL or self._weights == NULL:
            raise MemoryError()
        memset(self._weights, 0, 2 * num_layers * num_directions * sizeof(_DirectionWeights))
        for layer in range(num_layers):
            self._fuse_from[layer] = fuse_from[layer]

    def __dealloc__(self):
        PyMem_Free(self._fuse_from)
        PyMem_Free(self._weights)

    @property
    def stale(self):
        """True when PYLSTM_SIMD now asks for another level than the plan was built for."""
        return self._stale()

    cdef inline bint _stale(self):
        return self.level != pylstm_simd_level()

    cdef _add(self, Py_ssize_t index, tuple weights):
        """Keep one layer direction's (w_ih, w_hh, bias, w_hr, panels, packed) at ``index``."""
        if self._weights[index].ready:  # another thread added it while this one built it
            return
        w_ih, w_hh, bias, w_hr, panels, packed = weights
        cdef _DirectionWeights entry
        entry.w_ih = <const void *> _address(w_ih)
        entry.w_hh = <const void *> _address(w_hh)
        entry.bias = <const void *> _address(bias)
        entry.w_hr = <const void *> _address(w_hr)
        entry.panels = <const float *> _address(panels)
        cdef int k
        for k in range(3):
            entry.packed[k] = <const void *> _address(packed[k])
        entry.ready = True
        self._kept.append(weights)
        # set whole, with the GIL held: another thread sees no entry or all of this one
        self._weights[index] = entry

    def forward(self, x, state, build):
        """``(out, (h_n, c_n))`` as ``LSTM.__call__`` without lengths, or None, having done nothing.

        None unless the plan is not stale and ``x`` (B, T, I) and, if not None,
        ``state = (h0, c0)`` ((L * D, B, P), (L * D, B, H)) are exact ndarrays of
        the plan's dtype, native byte order, C-contiguous, aligned and finite:
        the caller then takes the general path, which converts them or
        rejects them with a clear error. ``build(layer, direction, fused,
        level)`` returns a layer direction's weights the first time a batch
        size needs them. New arrays are returned; the inputs are not modified.
        """
        if self._stale() or not _ready(x, self._typenum, 3):
            return None
        cdef const cnp.npy_intp *x_dims = cnp.PyArray_DIMS(<cnp.ndarray> x)
        cdef Py_ssize_t B = x_dims[0], T = x_dims[1]
        if B < 1 or T < 1 or x_dims[2] != self.input_size or B > self._max_batch \
                or T > INT_MAX // B:
            return None
        cdef Py_ssize_t L = self.num_layers, D = self.num_directions
        cdef Py_ssize_t H = self.hidden_size, P = self.output_size
        cdef cnp.npy_intp h_dims[3]
        cdef cnp.npy_intp c_dims[3]
        h_dims[0] = c_dims[0] = L * D
        h_dims[1] = c_dims[1] = B
        h_dims[2] = P
        c_dims[2] = H
        h0 = c0 = None
        if state is not None:
            if type(state) is not tuple or len(<tuple> state) != 2:
                return None
            h0, c0 = <tuple> state
            if not (_ready(h0, self._typenum, 3) and _ready(c0, self._typenum, 3)
                    and _same_shape(h0, h_dims) and _same_shape(c0, c_dims)):
                return None
        cdef bint finite
        if self._typenum == cnp.NPY_FLOAT32:
            finite = self._all_finite(<const float *> cnp.PyArray_DATA(x), h0, c0, B * T * self.input_size)
        else:
            finite = self._all_finite(<const double *> cnp.PyArray_DATA(x), h0, c0, B * T * self.input_size)
        if not finite:
            return None
        cdef Py_ssize_t layer, direction, index
        for layer in range(L):
            for direction in range(D):
                index = 2 * (layer * D + direction) + (B >= self._fuse_from[layer])
                if not self._weights[index].ready:
                    self._add(index, build(layer, direction, B >= self._fuse_from[layer], self.level))
        if state is None:  # the kernel carries each direction's state in place, here
            h_n = cnp.PyArray_ZEROS(3, h_dims, self._typenum, 0)
            c_n = cnp.PyArray_ZEROS(3, c_dims, self._typenum, 0)
        else:
            h_n = cnp.PyArray_NewCopy(<cnp.ndarray> h0, cnp.NPY_CORDER)
            c_n = cnp.PyArray_NewCopy(<cnp.ndarray> c0, cnp.NPY_CORDER)
        if self._typenum == cnp.NPY_FLOAT32:
            out = self._run(<float *> NULL, x, h_n, c_n)
        else:
            out = self._run(<double *> NULL, x, h_n, c_n)
        return out, (h_n, c_n)

    cdef bint _all_finite(self, const floating *x, h0, c0, Py_ssize_t n_x):
        """x, and the state when given, hold no NaN or infinity."""
        cdef bint finite
        cdef const floating *h = NULL
        cdef const floating *c = NULL
        cdef Py_ssize_t n_h = 0, n_c = 0
        if h0 is not None:
            h = <const floating *> cnp.PyArray_DATA(<cnp.ndarray> h0)
            c = <const floating *> cnp.PyArray_DATA(<cnp.ndarray> c0)
            n_h = cnp.PyArray_SIZE(<cnp.ndarray> h0)
            n_c = cnp.PyArray_SIZE(<cnp.ndarray> c0)
        with nogil:
            finite = _finite(x, n_x) and (h == NULL or (_finite(h, n_h) and _finite(c, n_c)))
        return finite

    cdef object _run(self, floating *typed, x, h_n, c_n):
        """Run every layer direction; returns the top layer's output (B, T, D * P)."""
        cdef const cnp.npy_intp *x_dims = cnp.PyArray_DIMS(<cnp.ndarray> x)
        cdef Py_ssize_t B = x_dims[0], T = x_dims[1], I = self.input_size
        cdef Py_ssize_t L = self.num_layers, D = self.num_directions
        cdef Py_ssize_t H = self.hidden_size, P = self.output_size
        cdef bint projects = P != H
        # chunks of a fixed number of rows: memory independent of T
        cdef Py_ssize_t chunk_steps = _chunk_steps(T, B, self._chunk_rows, self._min_chunk_steps)
        cdef Py_ssize_t rows = chunk_steps * B
        cdef Py_ssize_t widest = self._widest_input
        # workspaces: gates (rows, 4H), packed inputs (rows, widest), h scratch
        # (B, P), o * tanh(c) (B, H) when projecting; the identity packing
        cdef floating *gates = <floating *> _traced_malloc(rows * 4 * H * sizeof(floating))
        cdef floating *packed_x = <floating *> _traced_malloc(rows * widest * sizeof(floating))
        cdef floating *scratch = <floating *> _traced_malloc(B * P * sizeof(floating))
        cdef floating *cell_out = <floating *> _traced_malloc(B * H * sizeof(floating)) \
            if projects else NULL
        cdef Py_ssize_t *perm = <Py_ssize_t *> _traced_malloc((B + 2 * T + 1) * sizeof(Py_ssize_t))
        cdef Py_ssize_t *batch_sizes = perm + B
        cdef Py_ssize_t *offsets = perm + B + T
        cdef cnp.npy_intp out_dims[3]
        out_dims[0] = B
        out_dims[1] = T
        out_dims[2] = D * P
        cdef Py_ssize_t layer, direction, index, t, width
        cdef int status = 0, k, level
        cdef bint fused
        cdef floating *out_data
        cdef const floating *packed[3]
        cdef const floating *layer_in
        cdef _DirectionWeights *weights
        cdef floating *hidden = <floating *> cnp.PyArray_DATA(<cnp.ndarray> h_n)
        cdef floating *cell = <floating *> cnp.PyArray_DATA(<cnp.ndarray> c_n)
        try:
            if gates == NULL or packed_x == NULL or scratch == NULL or perm == NULL \
                    or (projects and cell_out == NULL):
                raise MemoryError()
            for t in range(B):
                perm[t] = t
            for t in range(T):
                batch_sizes[t] = B
            for t in range(T + 1):
                offsets[t] = t * B
            layer_input = x
            for layer in range(L):
                width = I if layer == 0 else D * P
                out = cnp.PyArray_EMPTY(3, out_dims, self._typenum, 0)
                layer_in = <const floating *> cnp.PyArray_DATA(<cnp.ndarray> layer_input)
                out_data = <floating *> cnp.PyArray_DATA(<cnp.ndarray> out)
                fused = B >= self._fuse_from[layer]
                with nogil:
                    for direction in range(D):
                        index = layer * D + direction
                        weights = &self._weights[2 * index + fused]
                        for k in range(3):
                            packed[k] = <const floating *> weights.packed[k]
                        # as direction_forward: the float32 SIMD step needs its panels
                        level = self.level if floating is double or weights.panels != NULL \
                            else PYLSTM_PORTABLE
                        status = _direction_forward(
                            B, T, width, H, P, direction == 1, chunk_steps, level, fused,
                            layer_in, perm, batch_sizes, offsets,
                            <const floating *> weights.w_ih, <const floating *> weights.w_hh,
                            <const floating *> weights.bias, <const floating *> weights.w_hr,
                            weights.panels, packed, hidden + index * B * P, cell + index * B * H,
                            out_data, D * P, direction * P,
                            packed_x, False, gates, cell_out, scratch, NULL, NULL, NULL)
                        if status != 0:
                            break
                if status != 0:
                    raise MemoryError("out of memory packing the LSTM weights")
                layer_input = out
            return layer_input
        finally:
            _traced_free(gates)
            _traced_free(packed_x)
            _traced_free(scratch)
            _traced_free(cell_out)
            _traced_free(perm)
