"""Python-callable twins of the matrix products in ``_blas.pxd``, used only by tests."""
from cython cimport floating
from libc.stdlib cimport free


cdef tuple _product_shape(bint trans_a, bint trans_b, tuple a_shape, tuple b_shape,
                          tuple c_shape, str name):
    """(m, n, k) of c = op(a) @ op(b), or ValueError if the shapes do not fit."""
    m, n = c_shape[0], c_shape[1]
    a_rows, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    b_rows, b_cols = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if a_rows != m or b_rows != k or b_cols != n:
        raise ValueError(f"{name}: shapes do not match: op(a) is ({a_rows}, {k}), "
                         f"op(b) is ({b_rows}, {b_cols}), c is ({m}, {n})")
    if m == 0 or n == 0 or k == 0:
        raise ValueError(f"{name}: zero-sized operands are not supported")
    return m, n, k


def gemm_py(bint trans_a, bint trans_b, floating alpha,
            const floating[:, ::1] a, const floating[:, ::1] b,
            floating beta, floating[:, ::1] c):
    """c[:] = alpha * op(a) @ op(b) + beta * c through scipy's BLAS, all C-contiguous."""
    cdef int m, n, k
    m, n, k = _product_shape(trans_a, trans_b, (a.shape[0], a.shape[1]), (b.shape[0], b.shape[1]),
                             (c.shape[0], c.shape[1]), "gemm_py")
    gemm(Trans if trans_a else NoTrans, Trans if trans_b else NoTrans,
         m, n, k, alpha, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
         beta, &c[0, 0], c.shape[1])


def matmul_py(int level, bint trans_a, bint trans_b, const floating[:, ::1] a,
              const floating[:, ::1] b, bint accumulate, floating[:, ::1] c):
    """c[:] = op(a) @ op(b) (+ c if accumulate) through ``matmul`` at a SIMD level (0: BLAS)."""
    cdef int m, n, k
    m, n, k = _product_shape(trans_a, trans_b, (a.shape[0], a.shape[1]), (b.shape[0], b.shape[1]),
                             (c.shape[0], c.shape[1]), "matmul_py")
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
