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
