# pylstm's scalar activations (libm), for float32 on the portable level.
# The vector ones live beside the loops that inline them: float32's SIMD step
# in _simd_impl.h, float64's cell update in _cell_impl.h (every level).
#
# Gate order is torch's: input gate i, forget gate f, input node (candidate) g,
# output gate o. Forward: c_t = f*c_{t-1} + i*g, r_t = o*tanh(c_t); the hidden
# state is h_t = r_t, or W_hr @ r_t when the layer projects.
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf


cdef inline floating sigmoid(floating x) noexcept nogil:
    """1 / (1 + exp(-x)); exp overflows to inf for x << 0, giving exactly 0."""
    if floating is float:
        return 1.0 / (1.0 + expf(-x))
    else:
        return 1.0 / (1.0 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    """np.tanh(x), in the precision of x."""
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)
