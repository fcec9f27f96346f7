/* A small GEMM with a packed right-hand side, for one element type and one
 * SIMD width; included by _simd.h once per (type, instruction set) with:
 *   SCALAR  float or double (SCALAR_IS_DOUBLE 0 or 1)
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

/* packed[blk][k][j] = B[k, blk * 4VW + j] (zero past N) for k in [k_begin,
 * k_end); B (K, N) read through strides: element (k, n) at b[k * b_row + n * b_col]. */
__attribute__((target(TARGET))) static void
GFN(pylstm_pack_b)(int K, int N, int k_begin, int k_end, const SCALAR *b, long b_row,
                   long b_col, SCALAR *packed) {
    const int width = 4 * VW;
    const int n_blocks = (N + width - 1) / width;
    for (int blk = 0; blk < n_blocks; ++blk)
        for (int k = k_begin; k < k_end; ++k) {
            SCALAR *dst = packed + ((long)blk * K + k) * width;
            for (int j = 0; j < width; ++j) {
                int n = blk * width + j;
                dst[j] = n < N ? b[(long)k * b_row + (long)n * b_col] : 0;
            }
        }
}

/* Transpose one TB x TB block (TB = 256 bits of SCALAR: 8 floats or 4
 * doubles) in AVX registers: dst[j * ld_dst + i] = src[i * ld_src + j]. */
#if SCALAR_IS_DOUBLE
#define TB 4
#else
#define TB 8
#endif
__attribute__((target(TARGET), always_inline)) static inline void
GFN(transpose_block)(const SCALAR *src, long ld_src, SCALAR *dst, long ld_dst, SCALAR *sums) {
#if TB == 8
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld_src);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ld_src), r3 = _mm256_loadu_ps(src + 3 * ld_src);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ld_src), r5 = _mm256_loadu_ps(src + 5 * ld_src);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ld_src), r7 = _mm256_loadu_ps(src + 7 * ld_src);
    if (sums != NULL) {  /* each column's sum over the rows, in row order */
        __m256 s = _mm256_loadu_ps(sums);
        s = _mm256_add_ps(s, r0); s = _mm256_add_ps(s, r1); s = _mm256_add_ps(s, r2);
        s = _mm256_add_ps(s, r3); s = _mm256_add_ps(s, r4); s = _mm256_add_ps(s, r5);
        s = _mm256_add_ps(s, r6); s = _mm256_add_ps(s, r7);
        _mm256_storeu_ps(sums, s);
    }
    /* pairs of rows interleaved, then quads, then the 128-bit halves swapped */
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ld_dst, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ld_dst, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ld_dst, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ld_dst, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ld_dst, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ld_dst, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ld_dst, _mm256_permute2f128_ps(s3, s7, 0x31));
#else
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + ld_src);
    __m256d r2 = _mm256_loadu_pd(src + 2 * ld_src), r3 = _mm256_loadu_pd(src + 3 * ld_src);
    if (sums != NULL) {  /* each column's sum over the rows, in row order */
        __m256d s = _mm256_loadu_pd(sums);
        s = _mm256_add_pd(s, r0); s = _mm256_add_pd(s, r1);
        s = _mm256_add_pd(s, r2); s = _mm256_add_pd(s, r3);
        _mm256_storeu_pd(sums, s);
    }
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ld_dst, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ld_dst, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ld_dst, _mm256_permute2f128_pd(t1, t3, 0x31));
#endif
}

/* dst (cols, rows) = src (rows, cols).T, src with leading dimension ld_src;
 * in 32 x 32 blocks so both sides stay in cache, each made of TB x TB
 * register transposes (scalar copies at the edges). If sums is not NULL,
 * sums[j] += src[i, j] over the rows in order, from the registers the
 * transpose loads (backward's bias gradient needs no pass of its own). */
__attribute__((target(TARGET))) static void
GFN(pylstm_transpose)(long rows, long cols, const SCALAR *src, long ld_src, SCALAR *dst,
                      SCALAR *sums) {
    const long block = 32;
    for (long i0 = 0; i0 < rows; i0 += block)
        for (long j0 = 0; j0 < cols; j0 += block) {
            long i1 = i0 + block < rows ? i0 + block : rows;
            long j1 = j0 + block < cols ? j0 + block : cols;
            long i = i0;
            for (; i + TB <= i1; i += TB) {
                long j = j0;
                for (; j + TB <= j1; j += TB)
                    GFN(transpose_block)(src + i * ld_src + j, ld_src, dst + j * rows + i, rows,
                                         sums != NULL ? sums + j : NULL);
                for (; j < j1; ++j)
                    for (long ii = i; ii < i + TB; ++ii) {
                        dst[j * rows + ii] = src[ii * ld_src + j];
                        if (sums != NULL) sums[j] += src[ii * ld_src + j];
                    }
            }
            for (; i < i1; ++i)
                for (long j = j0; j < j1; ++j) {
                    dst[j * rows + i] = src[i * ld_src + j];
                    if (sums != NULL) sums[j] += src[i * ld_src + j];
                }
        }
}
#undef TB

/* One tile: rows [m0, m0 + nr) x the first nv vectors of columns of block
 * blk, k in [k0, k1). nv < 4 only for a last block of narrow N (a product
 * with 8 columns would otherwise do 8 times the multiply-adds it needs). */
__attribute__((target(TARGET), always_inline)) static inline void
GFN(gtile)(const int nr, const int nv, int m0, int blk, int k0, int k1, int K, int N,
           const SCALAR *a, long a_row, long a_col, const SCALAR *packed,
           SCALAR *c, long ldc, int add_c) {
    const int width = 4 * VW;
    const SCALAR *panel = packed + (long)blk * K * width;
    GVEC acc[4][NR];
    for (int r = 0; r < nr; ++r)
        for (int v = 0; v < 4; ++v) acc[v][r] = (GVEC){0};
    if (nv == 4) {
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
    } else {  /* the same sums, over the first nv vectors only */
        for (int k = k0; k < k1; ++k) {
            const SCALAR *w = panel + (long)k * width;
            GVEC b[4];
            for (int v = 0; v < nv; ++v) b[v] = GFN(gload)(w + v * VW);
            for (int r = 0; r < nr; ++r) {
                SCALAR x = a[(long)(m0 + r) * a_row + (long)k * a_col];
                for (int v = 0; v < nv; ++v) acc[v][r] += b[v] * x;
            }
        }
    }
    const int n0 = blk * width;
    const int valid = N - n0 < width ? N - n0 : width;
    for (int r = 0; r < nr; ++r) {
        SCALAR *row = c + (long)(m0 + r) * ldc + n0;
        for (int v = 0; v < nv; ++v) {
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

/* Rows [m_begin, m_end) of one column block and K block: full tiles of NR
 * rows, then one tile of the rest. */
__attribute__((target(TARGET), always_inline)) static inline void
GFN(gemm_rows)(const int nv, int m_begin, int m_end, int blk, int k0, int k1, int K, int N,
               const SCALAR *a, long a_row, long a_col, const SCALAR *packed_b,
               SCALAR *c, long ldc, int add_c) {
    /* each call has a constant row count and nv, so the tile unrolls */
#define GTILE(rows) GFN(gtile)(rows, nv, m0, blk, k0, k1, K, N, a, a_row, a_col, packed_b, c, \
                               ldc, add_c)
    int m0 = m_begin;
    for (; m0 + NR <= m_end; m0 += NR) GTILE(NR);
    switch (m_end - m0) {
        case 1: GTILE(1); break;
#if NR > 2
        case 2: GTILE(2); break;
#endif
#if NR > 3
        case 3: GTILE(3); break;
#endif
#if NR > 4
        case 4: GTILE(4); break;
#endif
#if NR > 5
        case 5: GTILE(5); break;
#endif
        default: break;
    }
#undef GTILE
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
    for (int blk = blk_begin; blk < blk_end; ++blk) {
        /* vectors of this block holding columns < N: 4 except for a narrow last block */
        int nv = (N - blk * width + VW - 1) / VW;
        nv = nv >= 3 ? 4 : nv;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int k1 = k0 + KC < K ? k0 + KC : K;
            int add_c = accumulate || k0 > 0;
            switch (nv) {
                case 1: GFN(gemm_rows)(1, m_begin, m_end, blk, k0, k1, K, N, a, a_row, a_col,
                                       packed_b, c, ldc, add_c); break;
                case 2: GFN(gemm_rows)(2, m_begin, m_end, blk, k0, k1, K, N, a, a_row, a_col,
                                       packed_b, c, ldc, add_c); break;
                default: GFN(gemm_rows)(4, m_begin, m_end, blk, k0, k1, K, N, a, a_row, a_col,
                                        packed_b, c, ldc, add_c); break;
            }
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

/* C (M, N) = A @ B (+ C if accumulate); split across pylstm's threads when
 * it is big enough. prefer_rows: the caller asks for a split of A's and C's
 * rows when B fits in L2 (see below for which callers, and why). */
__attribute__((target(TARGET))) static void
GFN(pylstm_gemm)(int M, int N, int K, const SCALAR *a, long a_row, long a_col,
                 const SCALAR *packed_b, SCALAR *c, long ldc, int accumulate, int prefer_rows) {
    const int width = 4 * VW;
    GFN(pylstm_gemm_job) job = {M, N, K, (N + width - 1) / width, 0,
                                a, a_row, a_col, packed_b, c, ldc, accumulate};
    /* a thread's share must outweigh waking it (~1 us): about 2^18 multiply-adds */
    long work = (long)M * N * (K > 0 ? K : 1);
    int max_parts = (int)(work >> 18);
    int tiles = (M + NR - 1) / NR;
    /* Split row tiles when there are too few column blocks to share out, or
     * for prefer_rows when every core can keep all of packed B in its own
     * L2. Its callers: backward's per-step product, whose neighbouring passes
     * split the same rows (each thread then reads and writes only rows that
     * stay on its core), and the weight gradients' chunks, whose A (the
     * chunk's d_gates.T, used once) is the larger operand: the operand that
     * every thread reads whole is then the small B, not A (two cores reading
     * the same lines run slower, see pylstm_replica). Else split column
     * blocks, so each thread streams its share of B. (A row split for the
     * input term of a batch-1 sequence, whose steps run on one thread, cost
     * seq-small 7-14% at 2 threads, and a T = 1000 batch-1 call ~4%.) */
    long packed_bytes = (long)job.n_blocks * width * K * (long)sizeof(SCALAR);
    job.split_rows = (job.n_blocks < 4 && tiles > job.n_blocks)
                     || (prefer_rows && packed_bytes <= pylstm_l2_budget && tiles >= 4);
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
