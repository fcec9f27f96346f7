/* The elementwise parts of backpropagation through time, the optimizers'
 * updates and the float64 cell update, for one element type and one
 * instruction set; included by
 * _simd.h once per (type, level):
 *   SCALAR  float or double (SCALAR_IS_DOUBLE 0 or 1)
 *   SFX     name suffix, e.g. f32_avx512
 *   TARGET  the GCC/Clang target attribute string (undefined: portable)
 * Plain loops with no reductions across lanes, so GCC vectorises them at -O3
 * for whatever instruction set TARGET names, without -ffast-math. (float32's
 * cell update is fused into the SIMD step, _simd_impl.h.) */
#define ECAT_(a, b) a##_##b
#define ECAT(a, b) ECAT_(a, b)
#define EFN(name) ECAT(name, SFX)
#ifdef TARGET
#define EATTR __attribute__((target(TARGET)))
#else
#define EATTR
#endif

/* [B3] Differentiates [F3]: activated gates (live, 4H) -> pre-activation
 * gradients, in place. cell_prev (live, H) is c_{t-1}, tanh_cell (live, H)
 * tanh(c_t), both kept by the forward pass; d_cell_out (live, H) is
 * dL/d(o * tanh(c_t)), to which row b's out_grad[b] (H values: dL/d(out) at
 * this step, read where it lies) is first added in place when out_grad is
 * not NULL; d_cell (live, H) carries dL/dc_t in and dL/dc_{t-1} out. If
 * cell_out is not NULL, o * tanh(c_t) is written there (live, H), for the
 * projection's weight gradient. */
EATTR static void
EFN(pylstm_cell_backward)(long H, long live, SCALAR *gates, const SCALAR *cell_prev,
                          const SCALAR *tanh_cell, SCALAR *d_cell_out,
                          const SCALAR *const *out_grad, SCALAR *d_cell, SCALAR *cell_out) {
    for (long b = 0; b < live; ++b) {
        SCALAR *restrict z_i = gates + b * 4 * H, *restrict z_f = z_i + H;
        SCALAR *restrict z_g = z_i + 2 * H, *restrict z_o = z_i + 3 * H;
        const SCALAR *restrict c_prev = cell_prev + b * H;
        const SCALAR *restrict tanh_c = tanh_cell + b * H;
        SCALAR *restrict d_r = d_cell_out + b * H;
        SCALAR *restrict d_c_row = d_cell + b * H;
        /* The rows never overlap: without ivdep GCC gives up on its alias
         * checks (too many streams) and leaves these loops scalar. */
        if (out_grad != NULL) {
            const SCALAR *restrict d_out = out_grad[b];
#pragma GCC ivdep
            for (long j = 0; j < H; ++j) d_r[j] += d_out[j];
        }
        if (cell_out != NULL) {
            SCALAR *restrict r = cell_out + b * H;
#pragma GCC ivdep
            for (long j = 0; j < H; ++j) r[j] = z_o[j] * tanh_c[j];
        }
#pragma GCC ivdep
        for (long j = 0; j < H; ++j) {
            SCALAR i = z_i[j], f = z_f[j], g = z_g[j], o = z_o[j], t = tanh_c[j];
            SCALAR d_c = d_c_row[j] + d_r[j] * o * (1 - t * t);
            d_c_row[j] = d_c * f;
            z_i[j] = d_c * g * i * (1 - i);
            z_f[j] = d_c * c_prev[j] * f * (1 - f);
            z_g[j] = d_c * i * (1 - g * g);
            z_o[j] = d_r[j] * t * o * (1 - o);
        }
    }
}

/* sums += a.sum(axis=0) for a row-major (rows, cols) with rows lda apart:
 * each column summed in row order (vectorised across columns, so the order
 * does not change). */
EATTR static void
EFN(pylstm_add_row_sums)(const SCALAR *a, long rows, long cols, long lda,
                         SCALAR *restrict sums) {
    for (long j = 0; j < rows; ++j) {
        const SCALAR *restrict row = a + j * lda;
        for (long k = 0; k < cols; ++k) sums[k] += row[k];
    }
}

#if SCALAR_IS_DOUBLE
#define ESQRT sqrt
#else
#define ESQRT sqrtf
#endif

/* Adam's update of one flat parameter vector, in place, as scikit-learn's
 * AdamOptimizer (rate already holds the bias correction):
 *   first = beta_1 first + (1 - beta_1) grad
 *   second = beta_2 second + (1 - beta_2) grad^2
 *   param -= rate first / (sqrt(second) + epsilon)
 * One pass over the four vectors, where NumPy's expression made thirteen.
 * one_minus_1, one_minus_2 are 1 - beta_1, 1 - beta_2 rounded to SCALAR. */
EATTR static void
EFN(pylstm_adam_update)(long n, SCALAR *restrict param, const SCALAR *restrict grad,
                        SCALAR *restrict first, SCALAR *restrict second, SCALAR rate,
                        SCALAR beta_1, SCALAR one_minus_1, SCALAR beta_2,
                        SCALAR one_minus_2, SCALAR epsilon) {
    for (long k = 0; k < n; ++k) {
        SCALAR g = grad[k];
        SCALAR m = beta_1 * first[k] + one_minus_1 * g;
        SCALAR v = beta_2 * second[k] + one_minus_2 * (g * g);
        first[k] = m;
        second[k] = v;
        param[k] -= rate * (m / (ESQRT(v) + epsilon));
    }
}

/* SGD with momentum, in place, as scikit-learn's SGDOptimizer:
 *   velocity = momentum velocity - rate grad
 *   param += momentum velocity - rate grad   (Nesterov), else param += velocity */
EATTR static void
EFN(pylstm_sgd_update)(long n, SCALAR *restrict param, const SCALAR *restrict grad,
                       SCALAR *restrict velocity, SCALAR rate, SCALAR momentum,
                       int nesterov) {
    for (long k = 0; k < n; ++k) {
        SCALAR step = rate * grad[k];
        SCALAR v = momentum * velocity[k] - step;
        velocity[k] = v;
        param[k] += nesterov ? momentum * v - step : v;
    }
}
#undef ESQRT

#if SCALAR_IS_DOUBLE
/* Branch-free double activations: written so GCC vectorises the loops that
 * call them (both sides of each choice are computed, then selected). */

/* exp(x), x clamped to [-708, 709] so the result is finite and normal:
 * n = round(x / ln 2) by the 1.5 * 2^52 shifter, r = x - n ln 2 in two parts
 * (fdlibm's split), e^r by its Taylor series to degree 13 (truncation below
 * 5e-18 on |r| <= ln 2 / 2), 2^n from the exponent bits of the shifted sum. */
__attribute__((always_inline)) static inline double
EFN(pylstm_exp)(double x) {
    const double shifter = 6755399441055744.0;
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    double shifted = x * 1.4426950408889634 + shifter;
    double n = shifted - shifter;
    double r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    /* Horner, written out: a loop here would stop GCC vectorising the caller */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* unsigned: a NaN input gives any bits, and wraps instead of overflowing */
    uint64_t bits, shifter_bits;
    memcpy(&bits, &shifted, sizeof bits);
    memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
    uint64_t scale_bits = (bits - shifter_bits + 1023) << 52;  /* 2^n, n in [-1021, 1023] */
    double scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

/* Below -709 exp(-x) is clamped, and 1 / (1 + e^709) would leave ~1e-308 where
 * the sigmoid is 0 (a gate shut by a huge weight must be shut); NaN stays NaN. */
__attribute__((always_inline)) static inline double
EFN(pylstm_sigmoid)(double x) {
    double s = 1.0 / (1.0 + EFN(pylstm_exp)(-x));
    return x < -709.0 ? 0.0 : s;
}

/* tanh(x) with one division: Cephes' x + x z P(z) / Q(z), z = x^2, for
 * |x| < 0.625, else sign(x) (e - 1) / (e + 1) with e = exp(2|x|). */
__attribute__((always_inline)) static inline double
EFN(pylstm_tanh)(double x) {
    double ax = x < 0 ? -x : x;
    double z = x * x;
    double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
               - 1.61468768441708447952e3;
    double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
               + 4.84406305325125486048e3;
    double e = EFN(pylstm_exp)(2.0 * ax);
    double big_num = x < 0 ? 1.0 - e : e - 1.0;
    int small = ax < 0.625;
    return (small ? x * (q + z * p) : big_num) / (small ? q : e + 1.0);
}

/* [F3] for double: gates (live, 4H) pre-activations (+ bias) -> i, f, g, o
 * in place; c = f * c + i * g; cell_out = o * tanh(c); tanh_cell = tanh(c)
 * when not NULL (training). As _cell_forward in _kernel.pyx does with libm. */
EATTR static void
EFN(pylstm_cell_forward)(long H, long live, SCALAR *gates, const SCALAR *bias,
                         SCALAR *cell, SCALAR *cell_out, SCALAR *tanh_cell) {
    for (long b = 0; b < live; ++b) {
        SCALAR *restrict z_i = gates + b * 4 * H, *restrict z_f = z_i + H;
        SCALAR *restrict z_g = z_i + 2 * H, *restrict z_o = z_i + 3 * H;
        SCALAR *restrict c_row = cell + b * H;
        SCALAR *restrict r = cell_out + b * H;
        SCALAR *restrict t_row = tanh_cell != NULL ? tanh_cell + b * H : NULL;
        /* the rows never overlap: without this GCC gives up on its alias checks */
#pragma GCC ivdep
        for (long j = 0; j < H; ++j) {
            double i = EFN(pylstm_sigmoid)(z_i[j] + bias[j]);
            double f = EFN(pylstm_sigmoid)(z_f[j] + bias[H + j]);
            double g = EFN(pylstm_tanh)(z_g[j] + bias[2 * H + j]);
            double o = EFN(pylstm_sigmoid)(z_o[j] + bias[3 * H + j]);
            z_i[j] = i;
            z_f[j] = f;
            z_g[j] = g;
            z_o[j] = o;
            double c = f * c_row[j] + i * g;
            double tanh_c = EFN(pylstm_tanh)(c);
            c_row[j] = c;
            r[j] = o * tanh_c;
            if (t_row != NULL) t_row[j] = tanh_c;
        }
    }
}

/* Vector versions for the tests: out[k] = sigmoid(x[k]) (which = 0) or tanh(x[k]). */
EATTR static void
EFN(pylstm_activations)(int which, const SCALAR *x, SCALAR *restrict out, long n) {
    if (which == 0)
        for (long k = 0; k < n; ++k) out[k] = EFN(pylstm_sigmoid)(x[k]);
    else
        for (long k = 0; k < n; ++k) out[k] = EFN(pylstm_tanh)(x[k]);
}
#endif

#undef EATTR
#undef EFN
#undef ECAT
#undef ECAT_
