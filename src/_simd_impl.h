/* One SIMD width of the fused recurrent step; included by _simd.h once per
 * instruction set, with these macros defined:
 *   VW      lanes per vector (16 for AVX-512, 8 for AVX2)
 *   NR      batch rows per register tile
 *   SFX     name suffix (avx512, avx2)
 *   TARGET  the GCC/Clang target attribute string
 *
 * The step computes, for the live rows b of one time step (NumPy terms):
 *   z = gates[b] + h_prev[b] @ w_hh.T + bias          (4H,)  [F2]
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

typedef float VEC __attribute__((vector_size(VW * 4)));
typedef int IVEC __attribute__((vector_size(VW * 4)));

__attribute__((target(TARGET), always_inline)) static inline VEC
FN(load)(const float *p) { VEC v; memcpy(&v, p, sizeof v); return v; }

__attribute__((target(TARGET), always_inline)) static inline void
FN(store)(float *p, VEC v) { memcpy(p, &v, sizeof v); }

/* Loads/stores of the first n < VW lanes, for a last, partial block of units. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(load_part)(const float *p, int n) { VEC v = {0}; memcpy(&v, p, n * sizeof(float)); return v; }

__attribute__((target(TARGET), always_inline)) static inline void
FN(store_part)(float *p, VEC v, int n) { memcpy(p, &v, n * sizeof(float)); }

__attribute__((target(TARGET), always_inline)) static inline VEC
FN(select)(IVEC mask, VEC a, VEC b) {
    return (VEC)((mask & (IVEC)a) | (~mask & (IVEC)b));
}

/* exp(x), Cephes' expf polynomial: max relative error ~2 ulp on [-87, 88]. */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vexp)(VEC x) {
    const VEC hi = (VEC){0} + 88.3762626647949f, lo = (VEC){0} - 87.3365447505531f;
    x = FN(select)(x > hi, hi, x);
    x = FN(select)(x < lo, lo, x);
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick; r = x - n ln 2 in two parts */
    VEC n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    VEC r = x - n * 0.693359375f + n * 2.12194440e-4f;
    VEC r2 = r * r;
    VEC p = (VEC){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    /* 2^n from the exponent bits; n lies in [-126, 127] after clamping */
    IVEC bits = (__builtin_convertvector(n, IVEC) + 127) << 23;
    return p * (VEC)bits;
}

__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vsigmoid)(VEC x) { return 1.0f / (1.0f + FN(vexp)(-x)); }

/* tanh(x): Cephes' odd polynomial for |x| < 0.625, else
 * sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|). */
__attribute__((target(TARGET), always_inline)) static inline VEC
FN(vtanh)(VEC x) {
    IVEC sign = (IVEC)x & ((IVEC){0} + (int)0x80000000u);
    VEC ax = (VEC)((IVEC)x & ~sign);
    VEC e = FN(vexp)(-2.0f * ax);
    VEC big = (VEC)(((IVEC)((1.0f - e) / (1.0f + e))) | sign);
    VEC z = x * x;
    VEC p = (VEC){0} - 5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    VEC small = x + x * z * p;
    return FN(select)(ax < 0.625f, small, big);
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

/* Pack w_hh (4H, P) into panels of VW units: packed[u][k][gate][lane] =
 * w_hh[gate * H + u * VW + lane, k], zero for units >= H. */
__attribute__((target(TARGET))) static void
FN(pylstm_pack_whh)(int H, int P, const float *w_hh, float *packed) {
    int n_blocks = (H + VW - 1) / VW;
    for (int u = 0; u < n_blocks; ++u)
        for (int k = 0; k < P; ++k)
            for (int gate = 0; gate < 4; ++gate)
                for (int lane = 0; lane < VW; ++lane) {
                    int unit = u * VW + lane;
                    packed[(((long)u * P + k) * 4 + gate) * VW + lane] =
                        unit < H ? w_hh[((long)gate * H + unit) * P + k] : 0.0f;
                }
}

/* One register tile: units [u*VW, u*VW + width) of rows [row0, row0 + nr). */
__attribute__((target(TARGET), always_inline)) static inline void
FN(tile)(const int nr, int H, int P, int width, int u, int row0,
         const float *panel, const float *bias,
         const float *h_prev, int ld_h_prev,
         float *gates, int ld_gates, int store_gates,
         float *cell, int ld_cell, float *cell_out, int ld_cell_out) {
    VEC acc[4][NR];
    for (int b = 0; b < nr; ++b)
        for (int gate = 0; gate < 4; ++gate) acc[gate][b] = (VEC){0};
    /* [F2] acc[gate][b] += w_hh[gate units, k] * h_prev[row0 + b, k] */
    for (int k = 0; k < P; ++k) {
        const float *w = panel + (long)k * 4 * VW;
        VEC w_i = FN(load)(w), w_f = FN(load)(w + VW);
        VEC w_g = FN(load)(w + 2 * VW), w_o = FN(load)(w + 3 * VW);
        for (int b = 0; b < nr; ++b) {
            float h = h_prev[(long)(row0 + b) * ld_h_prev + k];
            acc[0][b] += w_i * h;
            acc[1][b] += w_f * h;
            acc[2][b] += w_g * h;
            acc[3][b] += w_o * h;
        }
    }
    /* [F3] epilogue: + input projection + bias, activations, cell update */
    int unit0 = u * VW;
    for (int b = 0; b < nr; ++b) {
        float *z = gates + (long)(row0 + b) * ld_gates + unit0;
        float *c_row = cell + (long)(row0 + b) * ld_cell + unit0;
        float *r_row = cell_out + (long)(row0 + b) * ld_cell_out + unit0;
        VEC zi, zf, zg, zo, c;
        if (width == VW) {
            zi = acc[0][b] + FN(load)(z) + FN(load)(bias + unit0);
            zf = acc[1][b] + FN(load)(z + H) + FN(load)(bias + H + unit0);
            zg = acc[2][b] + FN(load)(z + 2 * H) + FN(load)(bias + 2 * H + unit0);
            zo = acc[3][b] + FN(load)(z + 3 * H) + FN(load)(bias + 3 * H + unit0);
            c = FN(load)(c_row);
        } else {
            zi = acc[0][b] + FN(load_part)(z, width) + FN(load_part)(bias + unit0, width);
            zf = acc[1][b] + FN(load_part)(z + H, width) + FN(load_part)(bias + H + unit0, width);
            zg = acc[2][b] + FN(load_part)(z + 2 * H, width)
                 + FN(load_part)(bias + 2 * H + unit0, width);
            zo = acc[3][b] + FN(load_part)(z + 3 * H, width)
                 + FN(load_part)(bias + 3 * H + unit0, width);
            c = FN(load_part)(c_row, width);
        }
        VEC i = FN(vsigmoid)(zi), f = FN(vsigmoid)(zf), g = FN(vtanh)(zg), o = FN(vsigmoid)(zo);
        c = f * c + i * g;
        VEC r = o * FN(vtanh)(c);
        if (width == VW) {
            FN(store)(c_row, c);
            FN(store)(r_row, r);
            if (store_gates) {
                FN(store)(z, i); FN(store)(z + H, f); FN(store)(z + 2 * H, g); FN(store)(z + 3 * H, o);
            }
        } else {
            FN(store_part)(c_row, c, width);
            FN(store_part)(r_row, r, width);
            if (store_gates) {
                FN(store_part)(z, i, width); FN(store_part)(z + H, f, width);
                FN(store_part)(z + 2 * H, g, width); FN(store_part)(z + 3 * H, o, width);
            }
        }
    }
}

/* [F2]+[F3] for one time step over rows [0, live). See the header comment. */
__attribute__((target(TARGET))) static void
FN(pylstm_step)(int H, int P, int live, const float *packed_whh, const float *bias,
                const float *h_prev, int ld_h_prev, float *gates, int ld_gates,
                int store_gates, float *cell, int ld_cell,
                float *cell_out, int ld_cell_out) {
    int n_blocks = (H + VW - 1) / VW;
    for (int u = 0; u < n_blocks; ++u) {
        const float *panel = packed_whh + (long)u * P * 4 * VW;
        int width = H - u * VW < VW ? H - u * VW : VW;
        int row0 = 0;
        /* full tiles of NR rows, then one tile of the remaining rows; each
         * call has a constant row count so the tile unrolls into registers */
        for (; row0 + NR <= live; row0 += NR)
            FN(tile)(NR, H, P, width, u, row0, panel, bias, h_prev, ld_h_prev,
                     gates, ld_gates, store_gates, cell, ld_cell, cell_out, ld_cell_out);
        switch (live - row0) {
#define PYLSTM_TAIL(n) case n: FN(tile)(n, H, P, width, u, row0, panel, bias, h_prev, \
    ld_h_prev, gates, ld_gates, store_gates, cell, ld_cell, cell_out, ld_cell_out); break;
            PYLSTM_TAIL(1)
#if NR > 2
            PYLSTM_TAIL(2)
#endif
#if NR > 3
            PYLSTM_TAIL(3)
#endif
#if NR > 4
            PYLSTM_TAIL(4)
#endif
#if NR > 5
            PYLSTM_TAIL(5)
#endif
#undef PYLSTM_TAIL
            default: break;
        }
    }
}

#undef VEC
#undef IVEC
#undef FN
#undef CAT
#undef CAT_
