# The one BLAS wrapper of pylstm: every matrix product of the kernel goes
# through `gemm` below, which calls scipy's BLAS (scipy.linalg.cython_blas).
#
# Arrays are row-major everywhere in pylstm. Fortran BLAS is column-major, and
# a row-major (m, n) matrix is the column-major (n, m) matrix of its transpose,
# so C = op(A) @ op(B) is computed as C.T = op(B).T @ op(A).T: the operands and
# their sizes are swapped once, here, and nowhere else.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef enum BlasTranspose:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')


cdef inline void gemm(BlasTranspose trans_a, BlasTranspose trans_b,
                      int m, int n, int k, floating alpha,
                      const floating *a, int lda,
                      const floating *b, int ldb,
                      floating beta, floating *c, int ldc) noexcept nogil:
    """C = alpha * op(A) @ op(B) + beta * C for row-major C (m, n), op(A) (m, k), op(B) (k, n)."""
    cdef char ta = trans_a
    cdef char tb = trans_b
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb,
              <float *> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb,
              <double *> a, &lda, &beta, c, &ldc)


# The reproducible SIMD GEMM of _gemm_impl.h (AVX2 / AVX-512), for the same
# products at SIMD levels: its sums do not depend on thread counts, which
# OpenBLAS's do for some shapes. The portable level (0) uses gemm above.
from libc.stddef cimport size_t

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

# SIMD code streams packed operands with full-vector loads: a 64-byte load that
# straddles two cache lines costs two, which measured up to 1.8x slower at
# batch 1 (the step reads all of w_hh from L2). Buffers the kernels stream
# therefore start on a cache line.
cdef enum:
    CACHE_LINE = 64


cdef inline void *aligned_malloc(size_t size) noexcept nogil:
    """malloc on a cache-line boundary (release with free), or NULL when out of memory."""
    cdef void *p = NULL
    if posix_memalign(&p, CACHE_LINE, size if size > 0 else 1) != 0:
        return NULL
    return p

cdef extern from "_simd.h" nogil:
    long pylstm_packed_b_size(int level, int is_double, int K, int N)
    void pylstm_pack_b_f32(int level, int K, int N, const float *b, long b_row,
                           long b_col, float *packed)
    void pylstm_pack_b_f64(int level, int K, int N, const double *b, long b_row,
                           long b_col, double *packed)
    void pylstm_gemm_f32(int level, int M, int N, int K, const float *a, long a_row,
                         long a_col, const float *packed_b, float *c, long ldc, int accumulate,
                         int prefer_rows)
    void pylstm_gemm_f64(int level, int M, int N, int K, const double *a, long a_row,
                         long a_col, const double *packed_b, double *c, long ldc,
                         int accumulate, int prefer_rows)
    void pylstm_transpose_f32(int level, long rows, long cols, const float *src, long ld_src,
                              float *dst, float *col_sums)
    void pylstm_transpose_f64(int level, long rows, long cols, const double *src, long ld_src,
                              double *dst, double *col_sums)


cdef inline void transpose_into(int level, int rows, int cols, const floating *a, int lda,
                                floating *out, floating *col_sums=NULL) noexcept nogil:
    """out (cols, rows) = a (rows, cols).T, for a SIMD-level matmul's left operand;
    and col_sums (cols) += a.sum(axis=0), summed over the rows in order, unless NULL.

    The SIMD GEMM broadcasts A along its rows; reading a transposed A down a
    column would stride by lda, and a power-of-two stride thrashes one L1 set
    (with the stride padded it still ran 15-20% slower than a transposed copy).
    """
    if floating is float:
        pylstm_transpose_f32(level, rows, cols, a, lda, out, col_sums)
    else:
        pylstm_transpose_f64(level, rows, cols, a, lda, out, col_sums)


cdef inline void pack_operand_into(int level, BlasTranspose trans_b, int k, int n,
                                   const floating *b, int ldb, floating *packed) noexcept nogil:
    """Pack op(B) (k, n) for `matmul` at a SIMD level into ``packed``, which
    holds ``pylstm_packed_b_size(level, floating is double, k, n)`` values."""
    # element (kk, nn) of op(B) is b[kk * ldb + nn], or b[nn * ldb + kk] if transposed
    cdef long b_row = ldb if trans_b == NoTrans else 1
    cdef long b_col = 1 if trans_b == NoTrans else ldb
    if floating is float:
        pylstm_pack_b_f32(level, k, n, b, b_row, b_col, packed)
    else:
        pylstm_pack_b_f64(level, k, n, b, b_row, b_col, packed)


cdef inline void *packed_buffer(int level, bint is_double, int k, int n) noexcept nogil:
    """Room for a (k, n) operand packed by `pack_operand_into` (free it), or NULL when out of memory."""
    return aligned_malloc(pylstm_packed_b_size(level, is_double, k, n)
                          * (sizeof(double) if is_double else sizeof(float)))


cdef inline floating *pack_operand(int level, BlasTranspose trans_b, int k, int n,
                                   const floating *b, int ldb) noexcept nogil:
    """Pack op(B) (k, n) for `matmul` at a SIMD level.

    Returns a malloc'd buffer for the caller to free, or NULL when out of
    memory; not used on the portable level (0), where matmul reads B itself.
    """
    cdef floating *packed = <floating *> packed_buffer(level, floating is double, k, n)
    if packed == NULL:
        return NULL
    pack_operand_into(level, trans_b, k, n, b, ldb, packed)
    return packed


cdef inline void matmul(int level, BlasTranspose trans_a, BlasTranspose trans_b,
                        int m, int n, int k, const floating *a, int lda,
                        const floating *b, int ldb, const floating *packed_b,
                        bint accumulate, floating *c, int ldc,
                        bint prefer_rows=False) noexcept nogil:
    """C = op(A) @ op(B) (+ C if accumulate), row-major, C (m, n).

    Level 0: BLAS on b. SIMD levels: the reproducible GEMM on packed_b, which
    is op(B) from pack_operand at the same level. ``prefer_rows``: split A's
    and C's rows across the threads when B fits in L2, for products whose
    neighbouring passes split the same rows, or whose A is the larger operand
    (see ``_gemm_impl.h``).
    """
    cdef long a_row = lda if trans_a == NoTrans else 1
    cdef long a_col = 1 if trans_a == NoTrans else lda
    if level == 0:
        gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, ldc)
    elif floating is float:
        pylstm_gemm_f32(level, m, n, k, a, a_row, a_col, packed_b, c, ldc, accumulate, prefer_rows)
    else:
        pylstm_gemm_f64(level, m, n, k, a, a_row, a_col, packed_b, c, ldc, accumulate, prefer_rows)
