/* One SIMD width of the fused recurrent step; included by _simd.h once per
 * instruction set, with these macros defined:
 *   VW      lanes per vector (16 for AVX-512, 8 for AVX2)
 *   NR      batch rows per register tile
 *   SFX     name suffix (avx512, avx2)
 *   TARGET  the GCC/Clang target attribute string
 *
 * The step computes, for the live rows b of one time step (NumPy terms):
 *   z = h_prev[b] @ w_hh.T + x[b] @ w_ih.T + bias     (4H,)  [F1]+[F2]
 * where the input term is either already in gates[b] (computed for many
 * steps by one BLAS GEMM) or, when x is given, computed here too.
 *   i, f, o = sigmoid(z_i, z_f, z_o); g = tanh(z_g)          [F3]
 *   c[b] = f * c[b] + i * g;  r[b] = o * tanh(c[b])
 * A register tile holds the i, f, g and o accumulators of the same VW
 * units for NR rows, so the activations and cell update run while the
 * product is still in registers (no pass over the gate buffer afterwards).
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)
#define VEC FN(pylstm_vec)
#define IVEC FN(pylstm_ivec)
#define UVEC FN(pylstm_uvec)

typedef float VEC __attribute__((vector_size(VW * 4)));
typedef int IVEC __attribute__((vector_size(VW * 4)));
typedef unsigned UVEC __attribute__((vector_size(VW * 4)));

__attribute__((target(TARGET), always_inline)) static inline VEC
FN(load)(const float *p) { VEC v; memcpy(&v, p, sizeof v); return v; }

__attribute__((target(TARGET), always_inline)) static inline void
FN(store)(float *p, VEC v) { memcpy(p, &v, sizeof v); }

/* Loads/stores of the first n < VW lanes, for a last, partial block of units. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(load_part)(const float *p, int n) { VEC v = {0}; memcpy(&v, p, n * sizeof(float)); return v; }

__attribute__((target(TARGET), always_inline)) static inline void
FN(store_part)(float *p, VEC v, int n) { memcpy(p, &v, n * sizeof(float)); }

/* x limited to [lo, hi] in two instructions (a select takes three each).
 * min/max return their second operand when one is NaN, so x goes second: a
 * NaN (from an overflowed sum) stays NaN instead of becoming a bound. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(clamp)(VEC x, float lo, float hi) {
#if VW == 16
    return (VEC)_mm512_max_ps(_mm512_set1_ps(lo), _mm512_min_ps(_mm512_set1_ps(hi), (__m512)x));
#else
    return (VEC)_mm256_max_ps(_mm256_set1_ps(lo), _mm256_min_ps(_mm256_set1_ps(hi), (__m256)x));
#endif
}

/* exp(x), Cephes' expf polynomial: max relative error ~2 ulp on [-87, 88].
 * x is clamped there first, so no result is infinite or subnormal (a
 * subnormal result would cost a microcode assist). */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vexp)(VEC x) {
    x = FN(clamp)(x, -87.3365447505531f, 88.3762626647949f);
    /* n = round(x / ln 2); r = x - n ln 2 in two parts */
#if VW == 16
    VEC n = (VEC)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    VEC n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* the 1.5 * 2^23 trick */
#endif
    VEC r = x - n * 0.693359375f + n * 2.12194440e-4f;
    VEC r2 = r * r;
    VEC p = (VEC){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    /* p * 2^n: one instruction on AVX-512, else 2^n built from the exponent
     * bits (n lies in [-126, 127] after clamping) */
#if VW == 16
    return (VEC)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
    /* shifted as unsigned: a NaN lane converts to INT_MIN, and a negative
     * left shift is undefined */
    UVEC bits = (UVEC)(__builtin_convertvector(n, IVEC) + 127) << 23;
    return p * (VEC)bits;
#endif
}

/* n / d: on AVX-512 a 14-bit reciprocal estimate and one Newton step on the
 * quotient (within an ulp), cheaper than a division, whose unit is not fully
 * pipelined: the epilogue divides five times per row and unit block. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vdiv)(VEC n, VEC d) {
#if VW == 16
    VEC r = (VEC)_mm512_rcp14_ps((__m512)d);
    VEC y = n * r;
    return y + r * (n - d * y);  /* two FMAs */
#else
    return n / d;
#endif
}

/* Below the exp clamp, 1 / (1 + e^88.4) would leave ~4e-39 where the sigmoid
 * is 0: a gate shut by a huge pre-activation must be shut, or a huge weight
 * at the next step turns the leak into a visible error. NaN stays NaN. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vsigmoid)(VEC x) {
    VEC s = FN(vdiv)((VEC){0} + 1.0f, 1.0f + FN(vexp)(-x));
    return (VEC)((IVEC)s & ~(IVEC)(x < -88.3762626647949f));
}

/* tanh(x): a 13/6-degree odd/even rational fit (Eigen's coefficients) on
 * [-7.9, 7.9], beyond which tanh is +-1 in float32. One division and no
 * exp: a third of the work of an exp-based tanh with a small-|x| branch. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vtanh)(VEC x) {
    x = FN(clamp)(x, -7.90531110763549805f, 7.90531110763549805f);
    VEC x2 = x * x;
    VEC p = (VEC){0} - 2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    VEC q = (VEC){0} + 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return FN(vdiv)(x * p, q);
}

/* Vector versions for the tests: out[k] = f(x[k]). */
__attribute__((target(TARGET))) static void
FN(pylstm_activations)(int which, const float *x, float *out, long n) {
    long k = 0;
    for (; k + VW <= n; k += VW) {
        VEC v = FN(load)(x + k);
        FN(store)(out + k, which == 0 ? FN(vsigmoid)(v) : FN(vtanh)(v));
    }
    if (k < n) {
        VEC v = FN(load_part)(x + k, (int)(n - k));
        FN(store_part)(out + k, which == 0 ? FN(vsigmoid)(v) : FN(vtanh)(v), (int)(n - k));
    }
}

/* Pack w_hh (4H, P) and, if I > 0, w_ih (4H, I) into panels of VW units
 * (blocks [u_begin, u_end) of them):
 * panel u holds K = P + I rows of 4 * VW floats, row k = (gate, lane) ->
 * w_hh[gate * H + u * VW + lane, k] for k < P, then w_ih[..., k - P];
 * zero for units >= H. The panels are one contiguous stream. */
__attribute__((target(TARGET))) static void
FN(pylstm_pack_weights)(int H, int P, int I, int u_begin, int u_end, const float *w_hh,
                        const float *w_ih, float *packed) {
    int K = P + I;
    for (int u = u_begin; u < u_end; ++u)
        for (int k = 0; k < K; ++k)
            for (int gate = 0; gate < 4; ++gate)
                for (int lane = 0; lane < VW; ++lane) {
                    int unit = u * VW + lane;
                    float value = 0.0f;
                    if (unit < H)
                        value = k < P ? w_hh[((long)gate * H + unit) * P + k]
                                      : w_ih[((long)gate * H + unit) * I + (k - P)];
                    packed[(((long)u * K + k) * 4 + gate) * VW + lane] = value;
                }
}

/* Arguments of one step, shared by every tile of it. */
typedef struct {
    int H, P, I;                     /* units, recurrent inputs, fused inputs (0: none) */
    const float *panels;             /* pylstm_pack_weights(H, P, I, ...) */
    const float *bias;               /* (4H,) */
    const float *h_prev; int ld_h;   /* (live, P) */
    const float *x; int ld_x;        /* (live, I) when I > 0 */
    float *gates; int ld_gates;      /* (live, 4H): input term in (if I == 0), activations out */
    int store_gates;                 /* training: keep i, f, g, o for backward */
    float *cell; int ld_cell;        /* (live, H) in/out */
    float *cell_out; int ld_out;     /* (live, H) out: o * tanh(c) */
    float *tanh_cell; int ld_tanh;   /* (live, H) out: tanh(c), training only (else NULL) */
    float *cell_prev; int ld_prev;   /* (live, H) out: c_{t-1}, training only (else NULL) */
    /* When not NULL, row b of h_prev, x and cell_out is at h_rows[b], x_rows[b],
     * out_rows[b] instead (inference reads and writes the caller's arrays in place) */
    const float *const *h_rows, *const *x_rows;
    float *const *out_rows;
    /* When not NULL, row b's h_t is also written to next_rows[b]: training
     * keeps each step's h_prev, and this is the next step's row (or h_n's) */
    float *const *next_rows;
} FN(pylstm_step_args);

/* One register tile: units [u*VW, u*VW + width) of rows [row0, row0 + nr). */
__attribute__((target(TARGET), always_inline)) static inline void
FN(tile)(const int nr, const FN(pylstm_step_args) *a, int u, int width, int row0) {
    const int H = a->H, P = a->P, K = a->P + a->I;
    const float *panel = a->panels + (long)u * K * 4 * VW;
    VEC acc[4][NR], x_term[4][NR];
    const float *h_row[NR], *x_row[NR];
    for (int b = 0; b < nr; ++b) {
        h_row[b] = a->h_rows != NULL ? a->h_rows[row0 + b] : a->h_prev + (long)(row0 + b) * a->ld_h;
        x_row[b] = a->I == 0 ? NULL
                 : a->x_rows != NULL ? a->x_rows[row0 + b] : a->x + (long)(row0 + b) * a->ld_x;
    }
    /* [F1] fused: x_term[gate][b] = w_ih[gate units] @ x[row0 + b]. Summed on
     * its own, in the order of the separate input GEMM, so a sequence gets the
     * same bits whichever path its batch size picks. */
    for (int b = 0; b < nr; ++b)
        for (int gate = 0; gate < 4; ++gate) acc[gate][b] = (VEC){0};
    for (int k = P; k < K; ++k) {
        const float *w = panel + (long)k * 4 * VW;
        VEC w_i = FN(load)(w), w_f = FN(load)(w + VW);
        VEC w_g = FN(load)(w + 2 * VW), w_o = FN(load)(w + 3 * VW);
        PYLSTM_IN_REGISTERS(w_i, w_f, w_g, w_o);
        for (int b = 0; b < nr; ++b) {
            float x = x_row[b][k - P];
            acc[0][b] += w_i * x;
            acc[1][b] += w_f * x;
            acc[2][b] += w_g * x;
            acc[3][b] += w_o * x;
        }
    }
    for (int b = 0; b < nr; ++b)
        for (int gate = 0; gate < 4; ++gate) { x_term[gate][b] = acc[gate][b]; acc[gate][b] = (VEC){0}; }
    /* [F2] acc[gate][b] += w_hh[gate units, k] * h_prev[row0 + b, k] */
    for (int k = 0; k < P; ++k) {
        const float *w = panel + (long)k * 4 * VW;
        VEC w_i = FN(load)(w), w_f = FN(load)(w + VW);
        VEC w_g = FN(load)(w + 2 * VW), w_o = FN(load)(w + 3 * VW);
        PYLSTM_IN_REGISTERS(w_i, w_f, w_g, w_o);
        for (int b = 0; b < nr; ++b) {
            float h = h_row[b][k];
            acc[0][b] += w_i * h;
            acc[1][b] += w_f * h;
            acc[2][b] += w_g * h;
            acc[3][b] += w_o * h;
        }
    }
    /* [F3] epilogue: (+ input term) + bias, activations, cell update */
    const int unit0 = u * VW;
    const int full = width == VW;
#define LOAD(p) (full ? FN(load)(p) : FN(load_part)((p), width))
#define STORE(p, v) do { if (full) FN(store)((p), (v)); else FN(store_part)((p), (v), width); } while (0)
    VEC bias_i = LOAD(a->bias + unit0), bias_f = LOAD(a->bias + H + unit0);
    VEC bias_g = LOAD(a->bias + 2 * H + unit0), bias_o = LOAD(a->bias + 3 * H + unit0);
    for (int b = 0; b < nr; ++b) {
        long row = row0 + b;
        /* no gate buffer on the streaming path (fused input, nothing stored) */
        float *z = a->gates != NULL ? a->gates + row * a->ld_gates + unit0 : NULL;
        float *c_row = a->cell + row * a->ld_cell + unit0;
        /* z = (h @ w_hh.T + bias) + x @ w_ih.T, the same association on both paths */
        VEC zi = acc[0][b] + bias_i, zf = acc[1][b] + bias_f;
        VEC zg = acc[2][b] + bias_g, zo = acc[3][b] + bias_o;
        if (a->I == 0) {
            zi += LOAD(z); zf += LOAD(z + H); zg += LOAD(z + 2 * H); zo += LOAD(z + 3 * H);
        } else {
            zi += x_term[0][b]; zf += x_term[1][b]; zg += x_term[2][b]; zo += x_term[3][b];
        }
        VEC i = FN(vsigmoid)(zi), f = FN(vsigmoid)(zf), g = FN(vtanh)(zg), o = FN(vsigmoid)(zo);
        VEC c_prev = LOAD(c_row);
        VEC c = f * c_prev + i * g;
        VEC tanh_c = FN(vtanh)(c);
        VEC h = o * tanh_c;
        STORE(c_row, c);
        STORE((a->out_rows != NULL ? a->out_rows[row] : a->cell_out + row * a->ld_out) + unit0, h);
        /* training: the state this step started from and h_t's second copy,
         * stored from registers rather than copied by a pass of their own */
        if (a->cell_prev != NULL) STORE(a->cell_prev + row * a->ld_prev + unit0, c_prev);
        if (a->next_rows != NULL) STORE(a->next_rows[row] + unit0, h);
        if (a->store_gates) {
            STORE(z, i); STORE(z + H, f); STORE(z + 2 * H, g); STORE(z + 3 * H, o);
        }
        if (a->tanh_cell != NULL) STORE(a->tanh_cell + row * a->ld_tanh + unit0, tanh_c);
    }
#undef LOAD
#undef STORE
}

/* [F1]+[F2]+[F3] for one time step over rows [row_begin, row_end), unit blocks [u_begin, u_end). */
__attribute__((target(TARGET))) static void
FN(pylstm_step_range)(const FN(pylstm_step_args) *a, int row_begin, int row_end, int u_begin,
                      int u_end) {
    const int rows = row_end - row_begin;
    for (int u = u_begin; u < u_end; ++u) {
        int width = a->H - u * VW < VW ? a->H - u * VW : VW;
        int row0 = row_begin, full_rows = row_end - rows % NR;
        /* full tiles of NR rows, then one tile of the remaining rows; each
         * call has a constant row count so the tile unrolls into registers. */
#if NR == 6
        /* A last tile of one or two rows would re-read the unit block's panel
         * from L2 for 4-8 FMAs per k (L2-bound), so the last full tile and it
         * become 4 + 3 or 4 + 4 rows: 32 rows = 6+6+6+6+4+4, not 6+6+6+6+6+2.
         * Each row's sums run in the same order either way. */
        if (rows % NR != 0 && rows % NR <= 2 && full_rows - row_begin >= NR) full_rows -= NR;
#endif
        for (; row0 < full_rows; row0 += NR) FN(tile)(NR, a, u, width, row0);
#if NR == 6
        if (row_end - row0 > NR) { FN(tile)(4, a, u, width, row0); row0 += 4; }
#endif
        switch (row_end - row0) {
            case 1: FN(tile)(1, a, u, width, row0); break;
#if NR > 2
            case 2: FN(tile)(2, a, u, width, row0); break;
#endif
#if NR > 3
            case 3: FN(tile)(3, a, u, width, row0); break;
#endif
#if NR > 4
            case 4: FN(tile)(4, a, u, width, row0); break;
#endif
#if NR > 5
            case 5: FN(tile)(5, a, u, width, row0); break;
#endif
            default: break;
        }
    }
}

typedef struct {
    const FN(pylstm_step_args) *args;
    int live, n_blocks, by_rows;     /* by_rows: parts take rows, else unit blocks */
} FN(pylstm_step_job);

static void FN(pylstm_step_part)(void *context, int part, int n_parts) {
    const FN(pylstm_step_job) *job = context;
    if (job->by_rows)
        FN(pylstm_step_range)(job->args, (int)((long)job->live * part / n_parts),
                              (int)((long)job->live * (part + 1) / n_parts), 0, job->n_blocks);
    else
        FN(pylstm_step_range)(job->args, 0, job->live,
                              (int)((long)job->n_blocks * part / n_parts),
                              (int)((long)job->n_blocks * (part + 1) / n_parts));
}

/* pylstm_row_parts at this level's tile shape. */
static int FN(pylstm_row_parts)(long live, long H, long K, long elem) {
    int by_rows, parts = pylstm_step_split(NR, VW, live, H, K, elem, &by_rows);
    return by_rows ? parts : 1;
}

/* One step, its rows or its unit blocks split across pylstm's threads when that pays. */
__attribute__((target(TARGET))) static void
FN(pylstm_step)(const FN(pylstm_step_args) *a, int live) {
    FN(pylstm_step_job) job = {a, live, (a->H + VW - 1) / VW, 0};
    int max_parts = pylstm_step_split(NR, VW, live, a->H, a->P + a->I, sizeof(float), &job.by_rows);
    pylstm_parallel(max_parts, FN(pylstm_step_part), &job);
}

#undef VEC
#undef IVEC
#undef UVEC
#undef FN
#undef CAT
#undef CAT_
