"""Python-callable twins of the matrix products in ``_blas.pxd``, used only by tests."""
from cython cimport floating
from libc.stdlib cimport free


def gemm_py(bint trans_a, bint trans_b, floating alpha,
            const floating[:, ::1] a, const floating[:, ::1] b,
            floating beta, floating[:, ::1] c):
    """c[:] = alpha * op(a) @ op(b) + beta * c, all row-major C-contiguous arrays."""
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int a_rows = a.shape[1] if trans_a else a.shape[0]
    cdef int b_rows = b.shape[1] if trans_b else b.shape[0]
    cdef int b_cols = b.shape[0] if trans_b else b.shape[1]
    if a_rows != m or b_rows != k or b_cols != n:
        raise ValueError(
            f"gemm_py: shapes do not match: op(a) is ({a_rows}, {k}), "
            f"op(b) is ({b_rows}, {b_cols}), c is ({m}, {n})")
    if m == 0 or n == 0 or k == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError("gemm_py: zero-sized operands are not supported")
    gemm(Trans if trans_a else NoTrans, Trans if trans_b else NoTrans,
         m, n, k, alpha, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
         beta, &c[0, 0], c.shape[1])


def matmul_py(int level, bint trans_a, bint trans_b, const floating[:, ::1] a,
              const floating[:, ::1] b, bint accumulate, floating[:, ::1] c):
    """c[:] = op(a) @ op(b) (+ c if accumulate) through ``matmul`` at a SIMD level (0: BLAS)."""
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int a_rows = a.shape[1] if trans_a else a.shape[0]
    cdef int b_rows = b.shape[1] if trans_b else b.shape[0]
    cdef int b_cols = b.shape[0] if trans_b else b.shape[1]
    if a_rows != m or b_rows != k or b_cols != n:
        raise ValueError(
            f"matmul_py: shapes do not match: op(a) is ({a_rows}, {k}), "
            f"op(b) is ({b_rows}, {b_cols}), c is ({m}, {n})")
    if m == 0 or n == 0 or k == 0:
        raise ValueError("matmul_py: zero-sized operands are not supported")
    cdef BlasTranspose ta = Trans if trans_a else NoTrans
    cdef BlasTranspose tb = Trans if trans_b else NoTrans
    cdef floating *packed = NULL
    if level != 0:
        packed = pack_operand(level, tb, k, n, &b[0, 0], b.shape[1])
        if packed == NULL:
            raise MemoryError()
    matmul(level, ta, tb, m, n, k, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1], packed,
           accumulate, &c[0, 0], c.shape[1])
    free(packed)
