/* Run-time dispatch for pylstm's SIMD recurrent step (float32).
 *
 * The build uses no -march flag: every SIMD function carries a GCC/Clang
 * target attribute and is only called after __builtin_cpu_supports says the
 * CPU has that instruction set. Level 0 ("portable") means the caller uses
 * the BLAS + scalar-loop path, which runs on any x86-64.
 *
 * PYLSTM_SIMD=portable|avx2|avx512 caps the level (e.g. to test the portable
 * path on a machine with AVX-512); it never raises it above what the CPU has.
 */
#ifndef PYLSTM_SIMD_H
#define PYLSTM_SIMD_H

/* Every function here is static and each module uses a different subset. */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* NumPy's headers (included before this one in _kernel.c) bring <complex.h>,
 * whose macro I would rename every input size I below. */
#ifdef I
#undef I
#endif

#include "_threads.h"

enum { PYLSTM_PORTABLE = 0, PYLSTM_AVX2 = 1, PYLSTM_AVX512 = 2 };

/* Bytes of one core's L2 that read-only weights may fill and still stay
 * there between steps: set at import to _kernel.L2_BUDGET, which the layer's
 * rules use too (this default, 3/4 of 1 MiB, only for code that never sets it). */
static long pylstm_l2_budget = 3L << 18;
static void pylstm_set_l2_budget(long bytes) { if (bytes > 0) pylstm_l2_budget = bytes; }

/* How a step of `live` rows over H units and K = P (+ I) inputs splits
 * across threads, with register tiles of nr rows by vw units and panels of
 * elem-byte values: returns the most parts worth having and sets *by_rows
 * when they take rows rather than unit blocks.
 *
 * A thread's share must outweigh waking it (~1 us): about 2^17 multiply-adds.
 * Rows split when every core can keep all the panels in its own L2 and each
 * part gets two full tiles or more: a thread then reads and writes only its
 * own rows of h, c and the outputs, so nothing crosses cores between steps.
 * Otherwise unit blocks split, so that each core streams only its share of
 * the panels. */
static int pylstm_step_split(int nr, int vw, long live, long H, long K, long elem, int *by_rows) {
    long n_blocks = (H + vw - 1) / vw;
    long max_parts = live * 4 * H * K >> 17;
    *by_rows = live >= 4 * nr && n_blocks * K * 4 * vw * elem <= pylstm_l2_budget;
    long limit = *by_rows ? live / (2 * nr) : n_blocks;
    if (max_parts > limit) max_parts = limit;
    if (max_parts > PYLSTM_MAX_THREADS) max_parts = PYLSTM_MAX_THREADS;
    return max_parts < 1 ? 1 : (int)max_parts;
}

/* Keep four vectors in registers: a tile loads each panel vector once per k
 * and reuses it for every row. Left alone, GCC folds the load into each
 * row's FMA for tiles of fewer than NR rows, so every FMA reloads it from
 * memory: twice the loads per FMA, and the load ports, not the FMA units,
 * set the pace (a 2-row tile took 58% of the time of a 6-row one). */
#define PYLSTM_IN_REGISTERS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYLSTM_HAVE_SIMD 1
#include <immintrin.h>

#define VW 16
#define NR 6
#define SFX avx512
#define TARGET "avx512f,avx512dq,avx512vl,avx2,fma"
#include "_simd_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET

#define VW 8
#define NR 3
#define SFX avx2
#define TARGET "avx2,fma"
#include "_simd_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET

/* The reproducible GEMM, for both element types at both levels. */
#define SCALAR float
#define SCALAR_IS_DOUBLE 0
#define VW 16
#define NR 6
#define SFX f32_avx512
#define TARGET "avx512f,avx512dq,avx512vl,avx2,fma"
#include "_gemm_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET
#define VW 8
#define NR 3
#define SFX f32_avx2
#define TARGET "avx2,fma"
#include "_gemm_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET
#undef SCALAR
#undef SCALAR_IS_DOUBLE
#define SCALAR double
#define SCALAR_IS_DOUBLE 1
#define VW 8
#define NR 6
#define SFX f64_avx512
#define TARGET "avx512f,avx512dq,avx512vl,avx2,fma"
#include "_gemm_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET
#define VW 4
#define NR 3
#define SFX f64_avx2
#define TARGET "avx2,fma"
#include "_gemm_impl.h"
#undef VW
#undef NR
#undef SFX
#undef TARGET
#undef SCALAR
#undef SCALAR_IS_DOUBLE
#else
#define PYLSTM_HAVE_SIMD 0
#endif

/* The elementwise parts of BPTT (and float64's cell update), per element
 * type at each level. */
#define SCALAR float
#define SCALAR_IS_DOUBLE 0
#define CELL_TYPE f32
#include "_cell_levels.h"
#undef CELL_TYPE
#undef SCALAR
#undef SCALAR_IS_DOUBLE
#define SCALAR double
#define SCALAR_IS_DOUBLE 1
#define CELL_TYPE f64
#include "_cell_levels.h"
#undef CELL_TYPE
#undef SCALAR
#undef SCALAR_IS_DOUBLE

#if PYLSTM_HAVE_SIMD
#define PYLSTM_LEVEL_CALL(name, tag, level, ...)                                   \
    do {                                                                          \
        if ((level) == PYLSTM_AVX512) name##_##tag##_avx512(__VA_ARGS__);         \
        else if ((level) == PYLSTM_AVX2) name##_##tag##_avx2(__VA_ARGS__);        \
        else name##_##tag##_portable(__VA_ARGS__);                                \
    } while (0)
#else
#define PYLSTM_LEVEL_CALL(name, tag, level, ...) name##_##tag##_portable(__VA_ARGS__)
#endif

/* Packing, transposes, the cell backward and the optimizers' updates would be
 * serial passes between the threaded products, so they are split across
 * pylstm's threads too, into parts that outweigh handing one over (~0.5 us):
 * at least this many elements moved or updated (~0.4 ns each), or units of a
 * cell backward (~4 ns each: memory-bound).
 * Each element is moved or computed the same way whichever thread does it. */
#define PYLSTM_MOVES_PER_PART 8192
#define PYLSTM_CELLS_PER_PART 2048

#define PYLSTM_CELL_DISPATCH(T, tag)                                                  \
typedef struct {                                                                     \
    int level; long H; T *gates; const T *cell_prev, *tanh_cell; T *d_cell_out;      \
    const T *const *out_grad; T *d_cell, *cell_out;                                  \
} pylstm_cell_backward_job_##tag;                                                    \
static void pylstm_cell_backward_part_##tag(void *context, long begin, long end) {  \
    const pylstm_cell_backward_job_##tag *j = context;                               \
    long H = j->H;                                                                   \
    PYLSTM_LEVEL_CALL(pylstm_cell_backward, tag, j->level, H, end - begin,           \
                      j->gates + begin * 4 * H, j->cell_prev + begin * H,            \
                      j->tanh_cell + begin * H, j->d_cell_out + begin * H,           \
                      j->out_grad != NULL ? j->out_grad + begin : NULL,              \
                      j->d_cell + begin * H,                                         \
                      j->cell_out != NULL ? j->cell_out + begin * H : NULL);         \
}                                                                                    \
/* split by rows */                                                                  \
static void pylstm_cell_backward_##tag(int level, long H, long live, T *gates,       \
                                       const T *cell_prev, const T *tanh_cell,       \
                                       T *d_cell_out, const T *const *out_grad,       \
                                       T *d_cell, T *cell_out) {                     \
    pylstm_cell_backward_job_##tag job = {level, H, gates, cell_prev, tanh_cell,     \
                                          d_cell_out, out_grad, d_cell, cell_out};   \
    pylstm_parallel_range(live, PYLSTM_CELLS_PER_PART / (H > 0 ? H : 1) + 1,         \
                          pylstm_cell_backward_part_##tag, &job);                    \
}                                                                                    \
typedef struct { int level; const T *a; long rows, cols; T *sums; }                 \
    pylstm_row_sums_job_##tag;                                                       \
static void pylstm_row_sums_part_##tag(void *context, long begin, long end) {       \
    const pylstm_row_sums_job_##tag *j = context;                                    \
    PYLSTM_LEVEL_CALL(pylstm_add_row_sums, tag, j->level, j->a + begin, j->rows,     \
                      end - begin, j->cols, j->sums + begin);                        \
}                                                                                    \
/* split by columns: each still summed over the rows in order */                     \
static void pylstm_add_row_sums_##tag(int level, const T *a, long rows, long cols,   \
                                      T *sums) {                                     \
    pylstm_row_sums_job_##tag job = {level, a, rows, cols, sums};                    \
    pylstm_parallel_range(cols, PYLSTM_MOVES_PER_PART / (rows > 0 ? rows : 1) + 1,   \
                          pylstm_row_sums_part_##tag, &job);                         \
}                                                                                    \
typedef struct {                                                                     \
    int level; T *param; const T *grad; T *first, *second;                           \
    T rate, beta_1, one_minus_1, beta_2, one_minus_2, epsilon;                       \
} pylstm_adam_job_##tag;                                                             \
static void pylstm_adam_part_##tag(void *context, long begin, long end) {           \
    const pylstm_adam_job_##tag *j = context;                                        \
    PYLSTM_LEVEL_CALL(pylstm_adam_update, tag, j->level, end - begin,                \
                      j->param + begin, j->grad + begin, j->first + begin,           \
                      j->second + begin, j->rate, j->beta_1, j->one_minus_1,         \
                      j->beta_2, j->one_minus_2, j->epsilon);                        \
}                                                                                    \
/* split into ranges of elements */                                                  \
static void pylstm_adam_update_##tag(int level, long n, T *param, const T *grad,     \
                                     T *first, T *second, T rate, T beta_1,          \
                                     T one_minus_1, T beta_2, T one_minus_2,         \
                                     T epsilon) {                                    \
    pylstm_adam_job_##tag job = {level, param, grad, first, second, rate, beta_1,    \
                                 one_minus_1, beta_2, one_minus_2, epsilon};         \
    pylstm_parallel_range(n, PYLSTM_MOVES_PER_PART, pylstm_adam_part_##tag, &job);   \
}                                                                                    \
typedef struct {                                                                     \
    int level; T *param; const T *grad; T *velocity; T rate, momentum; int nesterov; \
} pylstm_sgd_job_##tag;                                                              \
static void pylstm_sgd_part_##tag(void *context, long begin, long end) {            \
    const pylstm_sgd_job_##tag *j = context;                                         \
    PYLSTM_LEVEL_CALL(pylstm_sgd_update, tag, j->level, end - begin, j->param + begin, \
                      j->grad + begin, j->velocity + begin, j->rate, j->momentum,    \
                      j->nesterov);                                                  \
}                                                                                    \
static void pylstm_sgd_update_##tag(int level, long n, T *param, const T *grad,      \
                                    T *velocity, T rate, T momentum, int nesterov) { \
    pylstm_sgd_job_##tag job = {level, param, grad, velocity, rate, momentum,        \
                                nesterov};                                           \
    pylstm_parallel_range(n, PYLSTM_MOVES_PER_PART, pylstm_sgd_part_##tag, &job);    \
}
PYLSTM_CELL_DISPATCH(float, f32)
PYLSTM_CELL_DISPATCH(double, f64)
#undef PYLSTM_CELL_DISPATCH

static void pylstm_cell_forward_f64(int level, long H, long live, double *gates,
                                    const double *bias, double *cell, double *cell_out,
                                    double *tanh_cell) {
    PYLSTM_LEVEL_CALL(pylstm_cell_forward, f64, level, H, live, gates, bias, cell, cell_out,
                      tanh_cell);
}

static void pylstm_activations_f64(int level, int which, const double *x, double *out,
                                   long n) {
    PYLSTM_LEVEL_CALL(pylstm_activations, f64, level, which, x, out, n);
}
#undef PYLSTM_LEVEL_CALL

static int pylstm_cpu_level(void) {
#if PYLSTM_HAVE_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        return PYLSTM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return PYLSTM_AVX2;
#endif
    return PYLSTM_PORTABLE;
}

/* The level in use: what the CPU supports, capped by PYLSTM_SIMD. */
static int pylstm_simd_level(void) {
    int level = pylstm_cpu_level();
    const char *cap = getenv("PYLSTM_SIMD");
    if (cap != NULL) {
        int wanted = strcmp(cap, "portable") == 0 ? PYLSTM_PORTABLE
                   : strcmp(cap, "avx2") == 0 ? PYLSTM_AVX2 : level;
        if (wanted < level) level = wanted;
    }
    return level;
}

/* Lanes per panel at a level; 0 for the portable path (no panels). */
static int pylstm_panel_width(int level) {
    return level == PYLSTM_AVX512 ? 16 : level == PYLSTM_AVX2 ? 8 : 0;
}

static long pylstm_packed_size(int level, int H, int P, int I) {
    int width = pylstm_panel_width(level);
    if (width == 0) return 0;
    return (long)((H + width - 1) / width) * width * 4 * (P + I);
}

typedef struct { int level, H, P, I; const float *w_hh, *w_ih; float *packed; }
    pylstm_pack_weights_job;

static void pylstm_pack_weights_part(void *context, long u_begin, long u_end) {
    const pylstm_pack_weights_job *j = context;
#if PYLSTM_HAVE_SIMD
    if (j->level == PYLSTM_AVX512)
        pylstm_pack_weights_avx512(j->H, j->P, j->I, (int)u_begin, (int)u_end, j->w_hh,
                                   j->w_ih, j->packed);
    else if (j->level == PYLSTM_AVX2)
        pylstm_pack_weights_avx2(j->H, j->P, j->I, (int)u_begin, (int)u_end, j->w_hh,
                                 j->w_ih, j->packed);
#endif
}

/* Pack w_hh (4H, P) and optionally w_ih (4H, I) (I = 0: none) for
 * pylstm_step; split by unit blocks across pylstm's threads, as a step is. */
static void pylstm_pack_weights(int level, int H, int P, int I, const float *w_hh,
                                const float *w_ih, float *packed) {
    int width = pylstm_panel_width(level);
    if (width == 0) return;
    long n_blocks = (H + width - 1) / width, panel = (long)(P + I) * 4 * width;
    pylstm_pack_weights_job job = {level, H, P, I, w_hh, w_ih, packed};
    pylstm_parallel_range(n_blocks, PYLSTM_MOVES_PER_PART / (panel > 0 ? panel : 1) + 1,
                          pylstm_pack_weights_part, &job);
}

/* One fused step at a level; see _simd_impl.h for what each argument holds.
 * I > 0 computes the input term here from x; I == 0 reads it from gates.
 * h_rows, x_rows, out_rows (or NULL): per-row addresses of h_prev, x, cell_out;
 * cell_prev, next_rows (training, or NULL): where c_{t-1} and h_t's copy go. */
static void pylstm_step(int level, int live, int H, int P, int I, const float *panels,
                        const float *bias, const float *h_prev, int ld_h,
                        const float *x, int ld_x, float *gates, int ld_gates,
                        int store_gates, float *cell, int ld_cell,
                        float *cell_out, int ld_out, float *tanh_cell, int ld_tanh,
                        float *cell_prev, int ld_prev,
                        const float *const *h_rows, const float *const *x_rows,
                        float *const *out_rows, float *const *next_rows) {
#if PYLSTM_HAVE_SIMD
#define PYLSTM_ARGS {H, P, I, panels, bias, h_prev, ld_h, x, ld_x, gates, ld_gates, \
                     store_gates, cell, ld_cell, cell_out, ld_out, tanh_cell, ld_tanh, \
                     cell_prev, ld_prev, h_rows, x_rows, out_rows, next_rows}
    if (level == PYLSTM_AVX512) {
        pylstm_step_args_avx512 args = PYLSTM_ARGS;
        pylstm_step_avx512(&args, live);
    } else if (level == PYLSTM_AVX2) {
        pylstm_step_args_avx2 args = PYLSTM_ARGS;
        pylstm_step_avx2(&args, live);
    }
#undef PYLSTM_ARGS
#endif
}

/* Parts that the time loops may split a run of steps of `live` rows into,
 * each part taking its own rows through every step of the run (1: they
 * should not). The rule is the step's own row split (pylstm_step_split): the
 * recurrent panels (K = P, plus I when the step computes the input term)
 * must fit in each core's L2. Rows never depend on each other within a
 * step, so a run then needs no synchronisation from step to step. */
static int pylstm_row_parts(int level, long live, long H, long K, long elem) {
#if PYLSTM_HAVE_SIMD
    if (level == PYLSTM_AVX512) return pylstm_row_parts_avx512(live, H, K, elem);
    if (level == PYLSTM_AVX2) return pylstm_row_parts_avx2(live, H, K, elem);
#endif
    return 1;
}

/* Size of B (K, N) packed for pylstm_gemm_* at a level (elements). */
static long pylstm_packed_b_size(int level, int is_double, int K, int N) {
    int lanes = level == PYLSTM_AVX512 ? (is_double ? 8 : 16)
              : level == PYLSTM_AVX2 ? (is_double ? 4 : 8) : 0;
    if (lanes == 0) return 0;
    long width = 4L * lanes;
    return (N + width - 1) / width * width * (long)(K > 0 ? K : 1);
}

#define PYLSTM_GEMM_DISPATCH(T, tag)                                                      \
typedef struct {                                                                          \
    int level, K, N; const T *b; long b_row, b_col; T *packed;                            \
} pylstm_pack_b_job_##tag;                                                                \
static void pylstm_pack_b_part_##tag(void *context, long begin, long end) {              \
    const pylstm_pack_b_job_##tag *j = context;                                           \
    if (j->level == PYLSTM_AVX512)                                                        \
        pylstm_pack_b_##tag##_avx512(j->K, j->N, begin, end, j->b, j->b_row, j->b_col,    \
                                     j->packed);                                          \
    else if (j->level == PYLSTM_AVX2)                                                     \
        pylstm_pack_b_##tag##_avx2(j->K, j->N, begin, end, j->b, j->b_row, j->b_col,      \
                                   j->packed);                                            \
}                                                                                         \
/* split by rows of B */                                                                  \
static void pylstm_pack_b_##tag(int level, int K, int N, const T *b, long b_row,          \
                                long b_col, T *packed) {                                  \
    pylstm_pack_b_job_##tag job = {level, K, N, b, b_row, b_col, packed};                 \
    pylstm_parallel_range(K, PYLSTM_MOVES_PER_PART / (N > 0 ? N : 1) + 1,                 \
                          pylstm_pack_b_part_##tag, &job);                                \
}                                                                                         \
static void pylstm_gemm_##tag(int level, int M, int N, int K, const T *a, long a_row,     \
                              long a_col, const T *packed_b, T *c, long ldc,              \
                              int accumulate, int prefer_rows) {                          \
    if (level == PYLSTM_AVX512)                                                           \
        pylstm_gemm_##tag##_avx512(M, N, K, a, a_row, a_col, packed_b, c, ldc, accumulate, \
                                   prefer_rows);                                          \
    else if (level == PYLSTM_AVX2)                                                        \
        pylstm_gemm_##tag##_avx2(M, N, K, a, a_row, a_col, packed_b, c, ldc, accumulate,   \
                                 prefer_rows);                                            \
}                                                                                         \
typedef struct { int level; long rows, cols; const T *src; long ld_src; T *dst, *sums; } \
    pylstm_transpose_job_##tag;                                                           \
/* 32-column blocks [begin, end) of src (the last one may be narrower): rows of dst */    \
static void pylstm_transpose_part_##tag(void *context, long begin, long end) {           \
    const pylstm_transpose_job_##tag *j = context;                                        \
    long c0 = 32 * begin, c1 = 32 * end < j->cols ? 32 * end : j->cols;                   \
    T *sums = j->sums != NULL ? j->sums + c0 : NULL;                                      \
    if (j->level == PYLSTM_AVX512)                                                        \
        pylstm_transpose_##tag##_avx512(j->rows, c1 - c0, j->src + c0, j->ld_src,         \
                                        j->dst + c0 * j->rows, sums);                     \
    else if (j->level == PYLSTM_AVX2)                                                     \
        pylstm_transpose_##tag##_avx2(j->rows, c1 - c0, j->src + c0, j->ld_src,           \
                                      j->dst + c0 * j->rows, sums);                       \
}                                                                                         \
/* dst (cols, rows) = src (rows, cols).T, and sums (cols) += src's column sums if not   \
 * NULL; split by blocks of 32 columns of src (each column's sum stays with one part) */  \
static void pylstm_transpose_##tag(int level, long rows, long cols, const T *src,         \
                                   long ld_src, T *dst, T *sums) {                        \
    pylstm_transpose_job_##tag job = {level, rows, cols, src, ld_src, dst, sums};         \
    pylstm_parallel_range((cols + 31) / 32,                                               \
                          PYLSTM_MOVES_PER_PART / (32 * (rows > 0 ? rows : 1)) + 1,       \
                          pylstm_transpose_part_##tag, &job);                             \
}
#if PYLSTM_HAVE_SIMD
PYLSTM_GEMM_DISPATCH(float, f32)
PYLSTM_GEMM_DISPATCH(double, f64)
#else
static void pylstm_pack_b_f32(int l, int K, int N, const float *b, long r, long c, float *p) {}
static void pylstm_pack_b_f64(int l, int K, int N, const double *b, long r, long c, double *p) {}
static void pylstm_gemm_f32(int l, int M, int N, int K, const float *a, long ar, long ac,
                            const float *p, float *c, long ldc, int acc, int prefer_rows) {}
static void pylstm_gemm_f64(int l, int M, int N, int K, const double *a, long ar, long ac,
                            const double *p, double *c, long ldc, int acc, int prefer_rows) {}
static void pylstm_transpose_f32(int l, long r, long c, const float *s, long ld, float *d,
                                 float *sums) {}
static void pylstm_transpose_f64(int l, long r, long c, const double *s, long ld, double *d,
                                 double *sums) {}
#endif
#undef PYLSTM_GEMM_DISPATCH

/* Whether every value is finite: no exponent field all ones (inf or NaN).
 * Integer tests on the bits vectorise at -O3 on any x86-64; a floating-point
 * test would not (without -ffast-math the compiler keeps the sum's order).
 * Split across pylstm's threads: the inputs it checks (x, grad_output) come
 * from memory, and the check runs before the kernel with nothing else to do. */
#define PYLSTM_FINITE_PER_PART 65536
#define PYLSTM_ALL_FINITE(T, tag, U, exponent)                                        \
typedef struct { const T *values; atomic_int bad; } pylstm_finite_job_##tag;          \
static void pylstm_finite_part_##tag(void *context, long begin, long end) {           \
    pylstm_finite_job_##tag *job = context;                                           \
    U bad = 0;                                                                        \
    for (long k = begin; k < end; ++k) {                                              \
        U bits;                                                                       \
        memcpy(&bits, job->values + k, sizeof bits);                                  \
        bad |= (bits & exponent) == exponent;                                         \
    }                                                                                 \
    if (bad) atomic_store_explicit(&job->bad, 1, memory_order_relaxed);               \
}                                                                                     \
static int pylstm_all_finite_##tag(const T *values, long n) {                         \
    pylstm_finite_job_##tag job = {values, 0};                                        \
    pylstm_parallel_range(n, PYLSTM_FINITE_PER_PART, pylstm_finite_part_##tag, &job); \
    return !atomic_load_explicit(&job.bad, memory_order_relaxed);                      \
}
PYLSTM_ALL_FINITE(float, f32, unsigned int, 0x7f800000u)
PYLSTM_ALL_FINITE(double, f64, unsigned long long, 0x7ff0000000000000ull)
#undef PYLSTM_ALL_FINITE

/* Vector sigmoid (which=0) or tanh (which=1) at a level, for the tests. */
static int pylstm_vector_activation(int level, int which, const float *x, float *out, long n) {
#if PYLSTM_HAVE_SIMD
    if (level == PYLSTM_AVX512) { pylstm_activations_avx512(which, x, out, n); return 0; }
    if (level == PYLSTM_AVX2) { pylstm_activations_avx2(which, x, out, n); return 0; }
#endif
    return -1;
}

#endif /* PYLSTM_SIMD_H */
