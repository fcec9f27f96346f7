/* The elementwise parts of backpropagation through time, for one element
 * type and one instruction set; included by _simd.h once per (type, level):
 *   SCALAR  float or double
 *   SFX     name suffix, e.g. f32_avx512
 *   TARGET  the GCC/Clang target attribute string (undefined: portable)
 * Plain loops with no reductions across lanes, so GCC vectorises them at -O3
 * for whatever instruction set TARGET names, without -ffast-math. */
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
 * dL/d(o * tanh(c_t)); d_cell (live, H) carries dL/dc_t in and dL/dc_{t-1}
 * out. If cell_out is not NULL, o * tanh(c_t) is written there (live, H),
 * for the projection's weight gradient. */
EATTR static void
EFN(pylstm_cell_backward)(long H, long live, SCALAR *gates, const SCALAR *cell_prev,
                          const SCALAR *tanh_cell, const SCALAR *d_cell_out,
                          SCALAR *d_cell, SCALAR *cell_out) {
    for (long b = 0; b < live; ++b) {
        SCALAR *restrict z_i = gates + b * 4 * H, *restrict z_f = z_i + H;
        SCALAR *restrict z_g = z_i + 2 * H, *restrict z_o = z_i + 3 * H;
        const SCALAR *restrict c_prev = cell_prev + b * H;
        const SCALAR *restrict tanh_c = tanh_cell + b * H;
        const SCALAR *restrict d_r = d_cell_out + b * H;
        SCALAR *restrict d_c_row = d_cell + b * H;
        if (cell_out != NULL) {
            SCALAR *restrict r = cell_out + b * H;
            for (long j = 0; j < H; ++j) r[j] = z_o[j] * tanh_c[j];
        }
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

/* sums = a.sum(axis=0) for a row-major (rows, cols): each column summed in
 * row order (vectorised across columns, so the order does not change). */
EATTR static void
EFN(pylstm_row_sums)(const SCALAR *a, long rows, long cols, SCALAR *restrict sums) {
    for (long k = 0; k < cols; ++k) sums[k] = 0;
    for (long j = 0; j < rows; ++j) {
        const SCALAR *restrict row = a + j * cols;
        for (long k = 0; k < cols; ++k) sums[k] += row[k];
    }
}

#undef EATTR
#undef EFN
#undef ECAT
#undef ECAT_
