"""A pure-NumPy LSTM: the test oracle for pylstm.

The semantics are exactly those of ``torch.nn.LSTM(..., batch_first=True)``,
including packed sequences, projections and inter-layer dropout, and the
parameters carry torch's names and shapes. Along every ``4 * hidden_size``
axis the gates are laid out as input (i), forget (f), cell candidate (g),
output (o). One step of one direction of one layer, for one sequence::

    (1) gates = W_ih @ x_t + b_ih + W_hh @ h + b_hh        # (4H,)
    (2) i, f, o = sigmoid(gates_i, gates_f, gates_o); g = tanh(gates_g)
    (3) c = f * c + i * g                                   # (H,)
    (4) r = o * tanh(c)                                     # (H,)
    (5) h = W_hr @ r if proj_size > 0 else r                # (P,)

``reference_backward`` differentiates these by hand, with the same step tags.

Everything is computed in float64 and loops over sequences and time steps
one at a time: this code is meant to be obviously right, not fast. It shares
nothing with pylstm, so that the two can check each other.
"""
import numpy as np
from scipy.special import expit as sigmoid

GATE_NAMES = ("i", "f", "g", "o")
# What one step keeps for the backward pass, per (sequence, step).
STEP_RECORD_NAMES = ("x", "h_prev", "c_prev", "i", "f", "g", "o", "tanh_c", "r")


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------
def param_name(kind, layer, direction):
    """Torch's name of one parameter, e.g. ``weight_hh_l1_reverse``.

    Parameters
    ----------
    kind : {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"}
    layer : int
    direction : {0, 1}
        1 is the reverse direction of a bidirectional layer.

    Returns
    -------
    str
    """
    return f"{kind}_l{layer}" + ("_reverse" if direction == 1 else "")


def param_shapes(input_size, hidden_size, num_layers=1, bidirectional=False, proj_size=0):
    """Names and shapes of all parameters, in the order of torch's ``state_dict``.

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
    bidirectional : bool
    proj_size : int
        0 for no projection.

    Returns
    -------
    dict of str to tuple of int
    """
    num_directions = 2 if bidirectional else 1
    output_size = proj_size or hidden_size
    gate_size = 4 * hidden_size
    shapes = {}
    for layer in range(num_layers):
        layer_input_size = input_size if layer == 0 else num_directions * output_size
        for direction in range(num_directions):
            shapes[param_name("weight_ih", layer, direction)] = (gate_size, layer_input_size)
            shapes[param_name("weight_hh", layer, direction)] = (gate_size, output_size)
            shapes[param_name("bias_ih", layer, direction)] = (gate_size,)
            shapes[param_name("bias_hh", layer, direction)] = (gate_size,)
            if proj_size > 0:
                shapes[param_name("weight_hr", layer, direction)] = (proj_size, hidden_size)
    return shapes


def init_params(input_size, hidden_size, num_layers=1, bidirectional=False, proj_size=0, rng=None):
    """Random parameters drawn like torch's: U(-1/sqrt(H), 1/sqrt(H)).

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
    bidirectional : bool
    proj_size : int
        0 for no projection.
    rng : numpy.random.Generator, int or None
        Anything ``numpy.random.default_rng`` accepts.

    Returns
    -------
    dict of str to ndarray
        float64 arrays with torch's names and shapes.
    """
    rng = np.random.default_rng(rng)
    bound = 1.0 / np.sqrt(hidden_size)
    shapes = param_shapes(input_size, hidden_size, num_layers, bidirectional, proj_size)
    return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}


def _layer_weights(params, layer, direction):
    """The parameters of one layer and direction, keyed by kind (``weight_ih``...)."""
    weights = {}
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
        name = param_name(kind, layer, direction)
        if name in params:
            weights[kind] = params[name]
    return weights


def _as_float64_params(params, input_size, hidden_size, num_layers, bidirectional, proj_size):
    """Upcast every parameter to float64, checking names and shapes first.

    A wrong shape here is a bug in a test, so say exactly which one.
    """
    expected = param_shapes(input_size, hidden_size, num_layers, bidirectional, proj_size)
    if set(params) != set(expected):
        raise ValueError(
            f"parameter names {sorted(params)} do not match the configuration, "
            f"which needs {sorted(expected)}"
        )
    converted = {}
    for name, shape in expected.items():
        value = np.asarray(params[name], dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        converted[name] = value
    return converted


def _check_lengths(lengths, batch, steps):
    """Lengths as an int array, every sequence running all steps when None."""
    if lengths is None:
        return np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be {batch} integers, got {lengths!r}")
    if lengths.min() < 1 or lengths.max() > steps:
        raise ValueError(f"lengths must lie in [1, {steps}], got {lengths}")
    return lengths.astype(np.int64)


def _time_order(length, direction):
    """The steps one sequence of ``length`` valid steps visits, in order."""
    return range(length) if direction == 0 else range(length - 1, -1, -1)


# --------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------
def _cell_forward(weights, x_t, h_prev, c_prev):
    """One LSTM step; works on one sequence (1-D) or a batch (2-D, batch first).

    Returns
    -------
    h, c : ndarray
        The new hidden and cell state.
    record : dict
        Everything ``_cell_backward`` needs, keyed by ``STEP_RECORD_NAMES``.
    """
    # (1) gates = W_ih x + b_ih + W_hh h + b_hh, written for row vectors.
    gates = x_t @ weights["weight_ih"].T + weights["bias_ih"] + h_prev @ weights["weight_hh"].T + weights["bias_hh"]
    gates_i, gates_f, gates_g, gates_o = np.split(gates, 4, axis=-1)
    # (2)
    i, f, g, o = sigmoid(gates_i), sigmoid(gates_f), np.tanh(gates_g), sigmoid(gates_o)
    # (3)
    c = f * c_prev + i * g
    # (4)
    tanh_c = np.tanh(c)
    r = o * tanh_c
    # (5)
    h = r @ weights["weight_hr"].T if "weight_hr" in weights else r
    record = dict(x=x_t, h_prev=h_prev, c_prev=c_prev, i=i, f=f, g=g, o=o, tanh_c=tanh_c, r=r)
    return h, c, record


def _cell_backward(weights, record, grad_h, grad_c, grads):
    """Backward of ``_cell_forward`` for one sequence (1-D arrays).

    Parameters
    ----------
    weights : dict
        The layer's parameters, keyed by kind.
    record : dict
        What ``_cell_forward`` returned for this step.
    grad_h, grad_c : ndarray
        dL/dh and dL/dc of this step's outputs, all paths summed.
    grads : dict
        Gradient accumulators keyed by kind; updated in place.

    Returns
    -------
    grad_x, grad_h_prev, grad_c_prev : ndarray
    """
    i, f, g, o, tanh_c = (record[name] for name in ("i", "f", "g", "o", "tanh_c"))
    # (5) h = W_hr r
    if "weight_hr" in weights:
        grads["weight_hr"] += np.outer(grad_h, record["r"])
        grad_r = weights["weight_hr"].T @ grad_h
    else:
        grad_r = grad_h
    # (4) r = o * tanh(c); c also reaches the next step, whose share is grad_c.
    grad_o = grad_r * tanh_c
    grad_c = grad_c + grad_r * o * (1.0 - tanh_c**2)
    # (3) c = f * c_prev + i * g
    grad_i = grad_c * g
    grad_f = grad_c * record["c_prev"]
    grad_g = grad_c * i
    grad_c_prev = grad_c * f
    # (2) sigmoid' = s (1 - s), tanh' = 1 - t^2
    grad_gates = np.concatenate(
        [grad_i * i * (1.0 - i), grad_f * f * (1.0 - f), grad_g * (1.0 - g**2), grad_o * o * (1.0 - o)]
    )
    # (1) gates = W_ih x + b_ih + W_hh h_prev + b_hh
    grads["weight_ih"] += np.outer(grad_gates, record["x"])
    grads["weight_hh"] += np.outer(grad_gates, record["h_prev"])
    grads["bias_ih"] += grad_gates
    grads["bias_hh"] += grad_gates
    grad_x = weights["weight_ih"].T @ grad_gates
    grad_h_prev = weights["weight_hh"].T @ grad_gates
    return grad_x, grad_h_prev, grad_c_prev


# --------------------------------------------------------------------------
# Whole sequences
# --------------------------------------------------------------------------
def reference_forward(
    params,
    x,
    h0=None,
    c0=None,
    lengths=None,
    *,
    num_layers,
    bidirectional,
    hidden_size,
    proj_size=0,
    dropout_masks=None,
):
    """Run a stacked LSTM over a batch of sequences, like torch.nn.LSTM.

    Parameters
    ----------
    params : dict of str to array_like
        Torch's names and shapes (see ``param_shapes``).
    x : array_like, shape (batch, time, input_size)
    h0 : array_like, shape (num_layers * num_directions, batch, P), optional
        P is ``proj_size or hidden_size``; zeros when None.
    c0 : array_like, shape (num_layers * num_directions, batch, hidden_size), optional
        Zeros when None.
    lengths : array_like of int, shape (batch,), optional
        Sequence b runs only its first ``lengths[b]`` steps, as torch's
        packed sequences do: its output is zero past its end, its final
        state is the one after its last valid step, and the reverse
        direction starts at step ``lengths[b] - 1``.
    num_layers : int
    bidirectional : bool
    hidden_size : int
    proj_size : int
        0 for no projection.
    dropout_masks : list of array_like, shape (batch, time, num_directions * P), optional
        ``num_layers - 1`` masks, already scaled; mask k multiplies the
        output of layer k before it feeds layer k + 1.

    Returns
    -------
    out : ndarray, shape (batch, time, num_directions * P)
    h_n : ndarray, shape (num_layers * num_directions, batch, P)
    c_n : ndarray, shape (num_layers * num_directions, batch, hidden_size)
    tape : dict
        What ``reference_backward`` needs.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (batch, time, features), got {x.shape}")
    batch, steps, input_size = x.shape
    params = _as_float64_params(params, input_size, hidden_size, num_layers, bidirectional, proj_size)
    num_directions = 2 if bidirectional else 1
    output_size = proj_size or hidden_size
    num_states = num_layers * num_directions
    h0 = np.zeros((num_states, batch, output_size)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c0 = np.zeros((num_states, batch, hidden_size)) if c0 is None else np.asarray(c0, dtype=np.float64)
    if h0.shape != (num_states, batch, output_size) or c0.shape != (num_states, batch, hidden_size):
        raise ValueError(f"h0 and c0 have shapes {h0.shape} and {c0.shape}, which do not fit the configuration")
    lengths = _check_lengths(lengths, batch, steps)
    if num_layers > 1 and dropout_masks is not None:
        dropout_masks = [np.asarray(mask, dtype=np.float64) for mask in dropout_masks]
        if len(dropout_masks) != num_layers - 1:
            raise ValueError(f"need {num_layers - 1} dropout masks, got {len(dropout_masks)}")
    else:
        dropout_masks = None

    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0)
    tape = dict(
        num_layers=num_layers,
        num_directions=num_directions,
        hidden_size=hidden_size,
        output_size=output_size,
        lengths=lengths,
        dropout_masks=dropout_masks,
        input_shape=x.shape,
        records=[],  # records[layer][direction][name] has shape (batch, time, size)
    )
    layer_input = x
    for layer in range(num_layers):
        if layer > 0 and dropout_masks is not None:
            layer_input = layer_input * dropout_masks[layer - 1]
        layer_output = np.zeros((batch, steps, num_directions * output_size))
        layer_records = []
        for direction in range(num_directions):
            weights = _layer_weights(params, layer, direction)
            state_index = layer * num_directions + direction
            output_slice = slice(direction * output_size, (direction + 1) * output_size)
            records = {}
            for b in range(batch):
                h, c = h0[state_index, b], c0[state_index, b]
                for t in _time_order(lengths[b], direction):
                    h, c, record = _cell_forward(weights, layer_input[b, t], h, c)
                    for name, value in record.items():
                        records.setdefault(name, np.zeros((batch, steps, value.size)))[b, t] = value
                    layer_output[b, t, output_slice] = h
                h_n[state_index, b] = h
                c_n[state_index, b] = c
            layer_records.append(records)
        tape["records"].append(layer_records)
        layer_input = layer_output
    return layer_output, h_n, c_n, tape


def reference_backward(params, tape, grad_out, grad_h_n=None, grad_c_n=None):
    """Backpropagation through time for ``reference_forward``, by hand.

    Parameters
    ----------
    params : dict of str to array_like
        The parameters the forward pass used.
    tape : dict
        The fourth value ``reference_forward`` returned.
    grad_out : array_like, shape (batch, time, num_directions * P) or None
        dL/d out; entries past a sequence's length are ignored, since the
        output there is the constant zero. None means zeros.
    grad_h_n, grad_c_n : array_like, optional
        dL/d h_n and dL/d c_n; zeros when None.

    Returns
    -------
    grad_x : ndarray, shape (batch, time, input_size)
    (grad_h0, grad_c0) : tuple of ndarray
        Shaped like h0 and c0.
    grad_params : dict of str to ndarray
        Same names and shapes as ``params``.
    """
    num_layers, num_directions = tape["num_layers"], tape["num_directions"]
    hidden_size, output_size = tape["hidden_size"], tape["output_size"]
    lengths, dropout_masks = tape["lengths"], tape["dropout_masks"]
    batch, steps, _ = tape["input_shape"]
    num_states = num_layers * num_directions

    grad_h_n = np.zeros((num_states, batch, output_size)) if grad_h_n is None else np.asarray(grad_h_n, np.float64)
    grad_c_n = np.zeros((num_states, batch, hidden_size)) if grad_c_n is None else np.asarray(grad_c_n, np.float64)
    grad_layer_output = np.zeros((batch, steps, num_directions * output_size))
    if grad_out is not None:
        grad_out = np.asarray(grad_out, dtype=np.float64)
        for b in range(batch):
            grad_layer_output[b, : lengths[b]] = grad_out[b, : lengths[b]]

    grad_params = {name: np.zeros(np.shape(value)) for name, value in params.items()}
    grad_h0 = np.zeros_like(grad_h_n)
    grad_c0 = np.zeros_like(grad_c_n)
    for layer in reversed(range(num_layers)):
        layer_input_size = tape["records"][layer][0]["x"].shape[-1]
        grad_layer_input = np.zeros((batch, steps, layer_input_size))
        for direction in range(num_directions):
            weights = {kind: np.asarray(value, np.float64) for kind, value in _layer_weights(params, layer, direction).items()}
            grads = {kind: grad_params[param_name(kind, layer, direction)] for kind in weights}
            records = tape["records"][layer][direction]
            state_index = layer * num_directions + direction
            output_slice = slice(direction * output_size, (direction + 1) * output_size)
            for b in range(batch):
                grad_h = grad_h_n[state_index, b].copy()
                grad_c = grad_c_n[state_index, b].copy()
                for t in reversed(_time_order(lengths[b], direction)):
                    # h of this step feeds both the layer output and the next step.
                    grad_h = grad_h + grad_layer_output[b, t, output_slice]
                    record = {name: records[name][b, t] for name in STEP_RECORD_NAMES}
                    grad_x, grad_h, grad_c = _cell_backward(weights, record, grad_h, grad_c, grads)
                    grad_layer_input[b, t] += grad_x
                grad_h0[state_index, b] = grad_h
                grad_c0[state_index, b] = grad_c
        if layer > 0:
            # The input of this layer is the previous layer's output times its mask.
            grad_layer_output = grad_layer_input
            if dropout_masks is not None:
                grad_layer_output = grad_layer_output * dropout_masks[layer - 1]
    return grad_layer_input, (grad_h0, grad_c0), grad_params


def reference_step(params, x_t, h, c, *, num_layers, hidden_size, proj_size=0):
    """One time step of a unidirectional stack, for a whole batch.

    Parameters
    ----------
    params : dict of str to array_like
    x_t : array_like, shape (batch, input_size)
    h : array_like, shape (num_layers, batch, P)
    c : array_like, shape (num_layers, batch, hidden_size)
    num_layers, hidden_size : int
    proj_size : int
        0 for no projection.

    Returns
    -------
    y_t : ndarray, shape (batch, P)
        The top layer's new hidden state.
    (h, c) : tuple of ndarray
        The new states, shaped like the given ones.
    """
    x_t = np.asarray(x_t, dtype=np.float64)
    params = _as_float64_params(params, x_t.shape[1], hidden_size, num_layers, False, proj_size)
    h = np.asarray(h, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    new_h, new_c = np.empty_like(h), np.empty_like(c)
    layer_input = x_t
    for layer in range(num_layers):
        new_h[layer], new_c[layer], _ = _cell_forward(_layer_weights(params, layer, 0), layer_input, h[layer], c[layer])
        layer_input = new_h[layer]
    return layer_input, (new_h, new_c)


# --------------------------------------------------------------------------
# Checking tools shared by the tests
# --------------------------------------------------------------------------
def numerical_gradient(loss, array, eps=1e-6):
    """Central finite differences of ``loss()`` with respect to every entry of ``array``.

    ``array`` is perturbed in place, one entry at a time, and restored.

    Parameters
    ----------
    loss : callable
        Takes no arguments, reads ``array``, returns a float.
    array : ndarray of float64
    eps : float

    Returns
    -------
    ndarray, shaped like ``array``
    """
    gradient = np.zeros(array.shape)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        loss_plus = loss()
        array[index] = saved - eps
        loss_minus = loss()
        array[index] = saved
        gradient[index] = (loss_plus - loss_minus) / (2 * eps)
    return gradient


def relative_error(actual, expected):
    """``||actual - expected|| / max(||actual||, ||expected||)``; 0 when both are 0.

    Taken over whole arrays, so that entries that are zero up to rounding
    (as gradients past a sequence's end are) do not blow it up.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.linalg.norm(actual), np.linalg.norm(expected))
    return 0.0 if scale == 0 else float(np.linalg.norm(actual - expected) / scale)


def assert_close(actual, expected, tol, name=""):
    """Entrywise ``|actual - expected| <= tol * (|expected| + max|expected|)``.

    The absolute part is relative to the array's largest entry, since a
    kernel's rounding error scales with the magnitudes it sums, not with
    each small result.
    """
    expected = np.asarray(expected, dtype=np.float64)
    assert np.shape(actual) == expected.shape, f"{name}: shape {np.shape(actual)} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        expected,
        rtol=tol,
        atol=tol * max(scale, 1e-30),
        err_msg=f"{name} (relative error over the array {relative_error(actual, expected):.2e})",
    )
