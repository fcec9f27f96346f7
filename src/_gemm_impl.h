/* A small GEMM with a packed right-hand side, for one element type and one
 * SIMD width; included by _simd.h once per (type, instruction set) with:
 *   SCALAR  float or double
 *   VW      lanes per vector
 *   NR      rows of C per register tile
 *   SFX     name suffix, e.g. f32_avx512
 *   TARGET  the GCC/Clang target attribute string
 *
 *   C (M, N) = A (M, K) @ B (K, N)   (+ C when accumulating)
 *
 * A is read in place through two strides (element (m, k) at
 * a[m * a_row + k * a_col]), so A or A.T of a row-major array both work
 * without a copy; B is packed once per call into panels of 4 * VW columns.
 * Every element of C is summed over k in increasing order by one tile, so
 * results do not depend on how the work is split (bitwise reproducible).
 */
#define GCAT_(a, b) a##_##b
#define GCAT(a, b) GCAT_(a, b)
#define GFN(name) GCAT(name, SFX)
#define GVEC GFN(pylstm_gvec)

typedef SCALAR GVEC __attribute__((vector_size(VW * sizeof(SCALAR))));

/* Rows of B per K block: keeps a panel block (KC x 4 VW) and the A lines a
 * tile reads within L2 while every row tile of C passes over it. */
#define KC 1024

__attribute__((target(TARGET), always_inline)) static inline GVEC
GFN(gload)(const SCALAR *p) { GVEC v; memcpy(&v, p, sizeof v); return v; }

__attribute__((target(TARGET), always_inline)) static inline void
GFN(gstore)(SCALAR *p, GVEC v) { memcpy(p, &v, sizeof v); }

/* Lanes [0, n) of a vector from/to memory, n in [0, VW]. */
__attribute__((target(TARGET), always_inline)) static inline GVEC
GFN(gload_part)(const SCALAR *p, int n) {
    GVEC v = {0};
    if (n > 0) memcpy(&v, p, n * sizeof(SCALAR));
    return v;
}

__attribute__((target(TARGET), always_inline)) static inline void
GFN(gstore_part)(SCALAR *p, GVEC v, int n) { if (n > 0) memcpy(p, &v, n * sizeof(SCALAR)); }

/* packed[blk][k][j] = B[k, blk * 4VW + j] (zero past N); B (K, N) read
 * through strides: element (k, n) at b[k * b_row + n * b_col]. */
__attribute__((target(TARGET))) static void
GFN(pylstm_pack_b)(int K, int N, const SCALAR *b, long b_row, long b_col, SCALAR *packed) {
    const int width = 4 * VW;
    const int n_blocks = (N + width - 1) / width;
    for (int blk = 0; blk < n_blocks; ++blk)
        for (int k = 0; k < K; ++k) {
            SCALAR *dst = packed + ((long)blk * K + k) * width;
            for (int j = 0; j < width; ++j) {
                int n = blk * width + j;
                dst[j] = n < N ? b[(long)k * b_row + (long)n * b_col] : 0;
            }
        }
}

/* dst (cols, rows) = src (rows, cols).T, src with leading dimension ld_src;
 * in 32 x 32 blocks so both sides stay in cache. */
__attribute__((target(TARGET))) static void
GFN(pylstm_transpose)(long rows, long cols, const SCALAR *src, long ld_src, SCALAR *dst) {
    const long block = 32;
    for (long i0 = 0; i0 < rows; i0 += block)
        for (long j0 = 0; j0 < cols; j0 += block) {
            long i1 = i0 + block < rows ? i0 + block : rows;
            long j1 = j0 + block < cols ? j0 + block : cols;
            for (long j = j0; j < j1; ++j)
                for (long i = i0; i < i1; ++i) dst[j * rows + i] = src[i * ld_src + j];
        }
}

/* One tile: rows [m0, m0 + nr) x columns of block blk, k in [k0, k1). */
__attribute__((target(TARGET), always_inline)) static inline void
GFN(gtile)(const int nr, int m0, int blk, int k0, int k1, int K, int N,
           const SCALAR *a, long a_row, long a_col, const SCALAR *packed,
           SCALAR *c, long ldc, int add_c) {
    const int width = 4 * VW;
    const SCALAR *panel = packed + (long)blk * K * width;
    GVEC acc[4][NR];
    for (int r = 0; r < nr; ++r)
        for (int v = 0; v < 4; ++v) acc[v][r] = (GVEC){0};
    for (int k = k0; k < k1; ++k) {
        const SCALAR *w = panel + (long)k * width;
        GVEC b0 = GFN(gload)(w), b1 = GFN(gload)(w + VW);
        GVEC b2 = GFN(gload)(w + 2 * VW), b3 = GFN(gload)(w + 3 * VW);
        PYLSTM_IN_REGISTERS(b0, b1, b2, b3);
        for (int r = 0; r < nr; ++r) {
            SCALAR x = a[(long)(m0 + r) * a_row + (long)k * a_col];
            acc[0][r] += b0 * x;
            acc[1][r] += b1 * x;
            acc[2][r] += b2 * x;
            acc[3][r] += b3 * x;
        }
    }
    const int n0 = blk * width;
    const int valid = N - n0 < width ? N - n0 : width;
    for (int r = 0; r < nr; ++r) {
        SCALAR *row = c + (long)(m0 + r) * ldc + n0;
        for (int v = 0; v < 4; ++v) {
            int lanes = valid - v * VW;
            lanes = lanes < 0 ? 0 : lanes > VW ? VW : lanes;
            if (lanes == VW) {
                GVEC out = add_c ? acc[v][r] + GFN(gload)(row + v * VW) : acc[v][r];
                GFN(gstore)(row + v * VW, out);
            } else if (lanes > 0) {
                GVEC out = add_c ? acc[v][r] + GFN(gload_part)(row + v * VW, lanes) : acc[v][r];
                GFN(gstore_part)(row + v * VW, out, lanes);
            }
        }
    }
}

/* Rows [m_begin, m_end) and column blocks [blk_begin, blk_end) of
 * C (M, N) = A @ B (+ C if accumulate); B from GFN(pylstm_pack_b)(K, N, ...).
 * Threads take disjoint ranges; each element's sum is the same either way. */
__attribute__((target(TARGET))) static void
GFN(pylstm_gemm_range)(int m_begin, int m_end, int blk_begin, int blk_end, int N, int K,
                       const SCALAR *a, long a_row, long a_col, const SCALAR *packed_b,
                       SCALAR *c, long ldc, int accumulate) {
    const int width = 4 * VW;
    if (K == 0) {  /* empty sum: C = 0 (or unchanged) */
        if (!accumulate)
            for (int m = m_begin; m < m_end; ++m)
                for (int n = blk_begin * width; n < N && n < blk_end * width; ++n)
                    c[(long)m * ldc + n] = 0;
        return;
    }
    for (int blk = blk_begin; blk < blk_end; ++blk)
        for (int k0 = 0; k0 < K; k0 += KC) {
            int k1 = k0 + KC < K ? k0 + KC : K;
            int add_c = accumulate || k0 > 0;
            int m0 = m_begin;
            for (; m0 + NR <= m_end; m0 += NR)
                GFN(gtile)(NR, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c);
            switch (m_end - m0) {
                case 1: GFN(gtile)(1, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c); break;
#if NR > 2
                case 2: GFN(gtile)(2, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c); break;
#endif
#if NR > 3
                case 3: GFN(gtile)(3, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c); break;
#endif
#if NR > 4
                case 4: GFN(gtile)(4, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c); break;
#endif
#if NR > 5
                case 5: GFN(gtile)(5, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, ldc, add_c); break;
#endif
                default: break;
            }
        }
}

typedef struct {
    int M, N, K, n_blocks, split_rows;
    const SCALAR *a; long a_row, a_col;
    const SCALAR *packed_b; SCALAR *c; long ldc; int accumulate;
} GFN(pylstm_gemm_job);

static void GFN(pylstm_gemm_part)(void *context, int part, int n_parts) {
    const GFN(pylstm_gemm_job) *job = context;
    if (job->split_rows) {  /* whole tiles of NR rows per part */
        int tiles = (job->M + NR - 1) / NR;
        int m0 = (int)((long)tiles * part / n_parts) * NR;
        int m1 = (int)((long)tiles * (part + 1) / n_parts) * NR;
        if (m1 > job->M) m1 = job->M;
        GFN(pylstm_gemm_range)(m0, m1, 0, job->n_blocks, job->N, job->K, job->a, job->a_row,
                               job->a_col, job->packed_b, job->c, job->ldc, job->accumulate);
    } else {
        int b0 = (int)((long)job->n_blocks * part / n_parts);
        int b1 = (int)((long)job->n_blocks * (part + 1) / n_parts);
        GFN(pylstm_gemm_range)(0, job->M, b0, b1, job->N, job->K, job->a, job->a_row,
                               job->a_col, job->packed_b, job->c, job->ldc, job->accumulate);
    }
}

/* C (M, N) = A @ B (+ C if accumulate); split across pylstm's threads when it is big enough. */
__attribute__((target(TARGET))) static void
GFN(pylstm_gemm)(int M, int N, int K, const SCALAR *a, long a_row, long a_col,
                 const SCALAR *packed_b, SCALAR *c, long ldc, int accumulate) {
    const int width = 4 * VW;
    GFN(pylstm_gemm_job) job = {M, N, K, (N + width - 1) / width, 0,
                                a, a_row, a_col, packed_b, c, ldc, accumulate};
    /* a thread's share must outweigh waking it (~1 us): about 2^18 multiply-adds */
    long work = (long)M * N * (K > 0 ? K : 1);
    int max_parts = (int)(work >> 18);
    int tiles = (M + NR - 1) / NR;
    /* split column blocks (each thread streams its share of B) unless there
     * are too few of them to share out */
    job.split_rows = job.n_blocks < 4 && tiles > job.n_blocks;
    int limit = job.split_rows ? tiles : job.n_blocks;
    if (max_parts > limit) max_parts = limit;
    if (max_parts < 1) max_parts = 1;
    pylstm_parallel(max_parts, GFN(pylstm_gemm_part), &job);
}

#undef KC
#undef GVEC
#undef GFN
#undef GCAT
#undef GCAT_
