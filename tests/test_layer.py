"""Tests of ``pylstm.LSTM`` against the NumPy oracle, finite differences and torch."""
import numpy as np
import pytest

import pylstm
from reference import (
    assert_close,
    init_params,
    numerical_gradient,
    param_shapes,
    reference_backward,
    reference_forward,
    reference_step,
    relative_error,
)

# torch falls back to its own kernel for projections and says so; that is its business.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")

# float32 is compared with the float64 oracle on the same float32 inputs, so
# its tolerance is float32 rounding accumulated over a few layers and steps.
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def make_layer(num_layers=1, bidirectional=False, proj_size=0, dtype=np.float64, input_size=3, hidden_size=4,
               dropout=0.0, random_state=0):
    return pylstm.LSTM(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                       bidirectional=bidirectional, proj_size=proj_size, dropout=dropout, dtype=dtype,
                       random_state=random_state)


def oracle_config(lstm):
    """The keyword arguments ``reference_forward`` needs to mirror ``lstm``."""
    return dict(num_layers=lstm.num_layers, bidirectional=lstm.bidirectional, hidden_size=lstm.hidden_size,
                proj_size=lstm.proj_size)


def state_shapes(lstm, batch):
    num_states = lstm.num_layers * lstm.num_directions
    return (num_states, batch, lstm.proj_size or lstm.hidden_size), (num_states, batch, lstm.hidden_size)


def random_lengths(kind, batch, steps, rng):
    """None, every sequence full ("full"), or a shuffled mix that includes 1 and ``steps`` ("mixed")."""
    if kind is None:
        return None
    if kind == "full":
        return np.full(batch, steps)
    lengths = rng.integers(1, steps + 1, batch)
    lengths[:2] = [1, steps][:batch]
    return rng.permutation(lengths)


def random_inputs(lstm, batch, steps, rng, lengths=None, state=True):
    """x, state, lengths and output gradients for ``lstm``, in its dtype."""
    h_shape, c_shape = state_shapes(lstm, batch)
    out_size = lstm.num_directions * (lstm.proj_size or lstm.hidden_size)

    def cast(array):
        return array.astype(lstm.dtype)

    return dict(
        x=cast(rng.standard_normal((batch, steps, lstm.input_size))),
        state=(cast(rng.standard_normal(h_shape)), cast(rng.standard_normal(c_shape))) if state else None,
        lengths=random_lengths(lengths, batch, steps, rng),
        grad_out=cast(rng.standard_normal((batch, steps, out_size))),
        grad_state=(cast(rng.standard_normal(h_shape)), cast(rng.standard_normal(c_shape))),
    )


def oracle(lstm, inputs, dropout_masks=None):
    """The oracle's forward and backward on exactly what ``lstm`` sees (its own weights, in float64)."""
    params = lstm.state_dict()
    h0, c0 = inputs["state"] if inputs["state"] is not None else (None, None)
    out, h_n, c_n, tape = reference_forward(params, inputs["x"], h0, c0, inputs["lengths"],
                                            dropout_masks=dropout_masks, **oracle_config(lstm))
    grad_state = inputs.get("grad_state") or (None, None)
    grad_x, grad_state0, grad_params = reference_backward(params, tape, inputs.get("grad_out"), *grad_state)
    return dict(out=out, h_n=h_n, c_n=c_n, grad_x=grad_x, grad_h0=grad_state0[0], grad_c0=grad_state0[1],
                grad_params=grad_params)


def weighted_loss(out, state, inputs):
    """``sum(grad_out * out) + sum(dh_n * h_n) + sum(dc_n * c_n)``: backward with these gradients is its gradient."""
    grad_h_n, grad_c_n = inputs["grad_state"]
    return float(np.sum(inputs["grad_out"] * out) + np.sum(grad_h_n * state[0]) + np.sum(grad_c_n * state[1]))


# --------------------------------------------------------------------------
# Against the oracle, over a grid of configurations
# --------------------------------------------------------------------------
STRUCTURES = {
    f"L{layers}-{'bi' if bidirectional else 'uni'}-proj{proj}": (layers, bidirectional, proj)
    for layers in (1, 2, 3) for bidirectional in (False, True) for proj in (0, 2)
}
INPUT_CASES = {
    "B1-T1": dict(batch=1, steps=1, lengths=None, state=False),
    "B1-T5-state": dict(batch=1, steps=5, lengths=None, state=True),
    "B4-T1-lengths": dict(batch=4, steps=1, lengths="mixed", state=True),
    "B4-T6": dict(batch=4, steps=6, lengths=None, state=False),
    "B4-T6-lengths-full": dict(batch=4, steps=6, lengths="full", state=False),
    "B5-T6-lengths-state": dict(batch=5, steps=6, lengths="mixed", state=True),
    "B6-T5-lengths": dict(batch=6, steps=5, lengths="mixed", state=False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case_name", list(INPUT_CASES))
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_forward_and_backward_match_reference(structure, case_name, dtype, rng):
    num_layers, bidirectional, proj_size = STRUCTURES[structure]
    case = INPUT_CASES[case_name]
    lstm = make_layer(num_layers, bidirectional, proj_size, dtype, input_size=3, hidden_size=4,
                      random_state=int(rng.integers(2**31)))
    inputs = random_inputs(lstm, case["batch"], case["steps"], rng, case["lengths"], case["state"])
    expected = oracle(lstm, inputs)
    tol = TOLERANCE[dtype]
    where = f"[{structure}, {case_name}, {np.dtype(dtype).name}]"

    out, (h_n, c_n) = lstm(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    for name, value in (("out", out), ("h_n", h_n), ("c_n", c_n)):
        assert value.dtype == dtype, f"{where} {name} has dtype {value.dtype}"
        assert_close(value, expected[name], tol, f"{where} {name}")
    if inputs["lengths"] is not None:
        for b, length in enumerate(inputs["lengths"]):
            assert np.all(out[b, length:] == 0), f"{where} out is not zero past sequence {b}'s length"

    train_out, (train_h_n, train_c_n), cache = lstm.forward_train(inputs["x"], state=inputs["state"],
                                                                  lengths=inputs["lengths"])
    assert_close(train_out, expected["out"], tol, f"{where} forward_train out")
    assert_close(train_h_n, expected["h_n"], tol, f"{where} forward_train h_n")
    assert_close(train_c_n, expected["c_n"], tol, f"{where} forward_train c_n")

    grads = lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])
    assert_close(grads.input, expected["grad_x"], tol, f"{where} grad input")
    assert_close(grads.state[0], expected["grad_h0"], tol, f"{where} grad h0")
    assert_close(grads.state[1], expected["grad_c0"], tol, f"{where} grad c0")
    assert set(grads.params) == set(expected["grad_params"]), f"{where} gradient names"
    for name, value in expected["grad_params"].items():
        assert_close(grads.params[name], value, tol, f"{where} grad {name}")


SIMD_LEVELS = [name for name, level in (("portable", 0), ("avx2", 1), ("avx512", 2))
               if level <= pylstm._kernel.cpu_level()]


@pytest.mark.parametrize("simd_level", SIMD_LEVELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("structure", ["L1-uni-proj0", "L2-bi-proj0", "L2-uni-proj2"])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(
        structure, dtype, simd_level, rng, monkeypatch):
    """input_grad=False skips dL/dx only: every other gradient is bit for bit the same."""
    monkeypatch.setenv("PYLSTM_SIMD", simd_level)
    num_layers, bidirectional, proj_size = STRUCTURES[structure]
    lstm = make_layer(num_layers, bidirectional, proj_size, dtype, input_size=3, hidden_size=20,
                      random_state=int(rng.integers(2**31)))
    inputs = random_inputs(lstm, 7, 9, rng, "mixed", True)
    grads = {}
    for input_grad in (True, False):
        _, _, cache = lstm.forward_train(inputs["x"], state=inputs["state"],
                                         lengths=inputs["lengths"])
        grads[input_grad] = lstm.backward(cache, inputs["grad_out"], inputs["grad_state"],
                                          input_grad=input_grad)
    assert grads[True].input is not None and grads[False].input is None
    np.testing.assert_array_equal(grads[False].flat, grads[True].flat)
    for got, want in zip(grads[False].state, grads[True].state):
        np.testing.assert_array_equal(got, want)
    assert_close(grads[False].params["weight_ih_l0"],
                 oracle(lstm, inputs)["grad_params"]["weight_ih_l0"], TOLERANCE[dtype],
                 "grad weight_ih_l0 without input_grad")


def test_backward_input_grad_must_be_a_bool():
    lstm = make_layer(1, False, 0, np.float64, input_size=FEATURES, hidden_size=4)
    _, _, cache = lstm.forward_train(GOOD_X)
    with pytest.raises(TypeError, match="input_grad must be a bool, got str"):
        lstm.backward(cache, input_grad="no")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("which", ["output-only", "state-only", "neither"])
def test_backward_with_missing_gradients(which, dtype, rng):
    lstm = make_layer(2, True, 0, dtype, random_state=1)
    inputs = random_inputs(lstm, 3, 4, rng, lengths="mixed")
    if which == "output-only":
        grad_out, grad_state = inputs["grad_out"], None
    elif which == "state-only":
        grad_out, grad_state = None, inputs["grad_state"]
    else:
        grad_out, grad_state = None, None
    expected = oracle(lstm, dict(inputs, grad_out=grad_out, grad_state=grad_state))
    _, _, cache = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    grads = lstm.backward(cache, grad_out, grad_state)
    tol = TOLERANCE[dtype]
    assert_close(grads.input, expected["grad_x"], tol, f"{which}: grad input")
    assert_close(grads.state[0], expected["grad_h0"], tol, f"{which}: grad h0")
    assert_close(grads.state[1], expected["grad_c0"], tol, f"{which}: grad c0")
    for name, value in expected["grad_params"].items():
        assert_close(grads.params[name], value, tol, f"{which}: grad {name}")


def test_large_batch_over_many_steps_matches_reference(rng):
    """Enough rows that inference cannot take the whole sequence in one piece."""
    lstm = make_layer(2, True, 0, np.float64, random_state=13)
    batch, steps = 300, 21
    x = rng.standard_normal((batch, steps, lstm.input_size))
    lengths = random_lengths("mixed", batch, steps, rng)
    out, (h_n, c_n) = lstm(x, lengths=lengths)
    train_out, _, _ = lstm.forward_train(x, lengths=lengths)
    assert_close(out, train_out, 1e-12, "inference vs forward_train out")
    # Sequences are independent, so the oracle needs to run only a few of them.
    picked = np.r_[np.argmax(lengths), np.argmin(lengths), rng.choice(batch, 4, replace=False)]
    expected_out, expected_h_n, expected_c_n, _ = reference_forward(
        lstm.state_dict(), x[picked], lengths=lengths[picked], **oracle_config(lstm))
    assert_close(out[picked], expected_out, 1e-10, "out")
    assert_close(h_n[:, picked], expected_h_n, 1e-10, "h_n")
    assert_close(c_n[:, picked], expected_c_n, 1e-10, "c_n")


# --------------------------------------------------------------------------
# Finite differences, directly on pylstm
# --------------------------------------------------------------------------
FD_CONFIGS = {
    "L1-uni": dict(num_layers=1, bidirectional=False, proj_size=0, lengths=None),
    "L2-bi-proj-lengths": dict(num_layers=2, bidirectional=True, proj_size=2, lengths="mixed"),
    "L3-uni-lengths": dict(num_layers=3, bidirectional=False, proj_size=0, lengths="mixed"),
}


@pytest.mark.parametrize("config_name", list(FD_CONFIGS))
def test_gradients_match_finite_differences(config_name, rng):
    config = dict(FD_CONFIGS[config_name])
    lengths_kind = config.pop("lengths")
    lstm = make_layer(**config, dtype=np.float64, input_size=3, hidden_size=3, random_state=2)
    inputs = random_inputs(lstm, 3, 4, rng, lengths_kind)
    params = lstm.state_dict()
    h0, c0 = inputs["state"]

    _, _, cache = lstm.forward_train(inputs["x"], state=(h0, c0), lengths=inputs["lengths"])
    grads = lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])

    def loss():
        lstm.load_state_dict(params)
        out, state = lstm(inputs["x"], state=(h0, c0), lengths=inputs["lengths"])
        return weighted_loss(out, state, inputs)

    checks = [(name, grads.params[name], value) for name, value in params.items()]
    checks += [("x", grads.input, inputs["x"]), ("h0", grads.state[0], h0), ("c0", grads.state[1], c0)]
    for name, analytic, array in checks:
        error = relative_error(analytic, numerical_gradient(loss, array))
        assert error < 1e-6, f"{config_name}: d loss / d {name} is off by {error:.2e}"


def test_dropout_gradients_match_finite_differences(rng):
    """With dropout, backward must differentiate the forward that drew the masks.

    Masks come from the layer's generator, so a fresh layer with the same
    random_state draws the same masks; a directional derivative checks
    every gradient at once.
    """
    config = dict(num_layers=3, bidirectional=True, proj_size=2, dtype=np.float64, input_size=3, hidden_size=3,
                  dropout=0.4, random_state=3)
    template = make_layer(**config)
    inputs = random_inputs(template, 3, 4, rng, "mixed")
    params = template.state_dict()

    def loss_and_grads(params, x, state):
        lstm = make_layer(**config)
        lstm.load_state_dict(params)
        out, state_n, cache = lstm.forward_train(x, state=state, lengths=inputs["lengths"])
        return weighted_loss(out, state_n, inputs), lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])

    _, grads = loss_and_grads(params, inputs["x"], inputs["state"])
    directions = {name: rng.standard_normal(value.shape) for name, value in params.items()}
    direction_x = rng.standard_normal(inputs["x"].shape)
    direction_state = tuple(rng.standard_normal(s.shape) for s in inputs["state"])
    analytic = (sum(np.sum(grads.params[name] * d) for name, d in directions.items())
                + np.sum(grads.input * direction_x)
                + sum(np.sum(g * d) for g, d in zip(grads.state, direction_state)))

    def shifted_loss(eps):
        shifted_params = {name: value + eps * directions[name] for name, value in params.items()}
        shifted_state = tuple(s + eps * d for s, d in zip(inputs["state"], direction_state))
        return loss_and_grads(shifted_params, inputs["x"] + eps * direction_x, shifted_state)[0]

    eps = 1e-6
    numeric = (shifted_loss(eps) - shifted_loss(-eps)) / (2 * eps)
    assert abs(analytic - numeric) < 1e-6 * max(abs(analytic), abs(numeric), 1.0)


# --------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------
def test_dropout_is_off_at_inference_and_on_in_training(rng):
    lstm = make_layer(2, True, 0, np.float64, dropout=0.5, random_state=4)
    inputs = random_inputs(lstm, 3, 5, rng, "mixed")
    expected = oracle(lstm, inputs)
    out, (h_n, c_n) = lstm(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    assert_close(out, expected["out"], 1e-10, "inference out with dropout set")
    assert_close(h_n, expected["h_n"], 1e-10, "inference h_n with dropout set")
    first, _, _ = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    second, _, _ = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    assert relative_error(first, out) > 1e-3, "forward_train ignored dropout"
    assert relative_error(first, second) > 1e-3, "forward_train drew the same dropout masks twice"
    # Dropout acts between layers only: past each sequence's end the output stays zero.
    for b, length in enumerate(inputs["lengths"]):
        assert np.all(first[b, length:] == 0)


def test_dropout_does_nothing_on_one_layer(rng):
    lstm = make_layer(1, True, 0, np.float64, dropout=0.5, random_state=5)
    inputs = random_inputs(lstm, 3, 4, rng)
    train_out, _, _ = lstm.forward_train(inputs["x"], state=inputs["state"])
    assert_close(train_out, oracle(lstm, inputs)["out"], 1e-10, "one-layer forward_train with dropout")


# --------------------------------------------------------------------------
# step()
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("num_layers, proj_size", [(1, 0), (2, 2), (3, 0)])
def test_step_matches_reference_and_full_sequence(num_layers, proj_size, dtype, rng):
    lstm = make_layer(num_layers, False, proj_size, dtype, random_state=6)
    inputs = random_inputs(lstm, 3, 5, rng)
    full_out, (full_h_n, full_c_n) = lstm(inputs["x"], state=inputs["state"])
    tol = TOLERANCE[dtype]
    h, c = inputs["state"]
    params = lstm.state_dict()
    for t in range(inputs["x"].shape[1]):
        expected_y, (expected_h, expected_c) = reference_step(params, inputs["x"][:, t], h, c, **{
            key: value for key, value in oracle_config(lstm).items() if key != "bidirectional"})
        y_t, (h, c) = lstm.step(inputs["x"][:, t], (h, c))
        assert y_t.shape == (3, proj_size or lstm.hidden_size)
        assert_close(y_t, expected_y, tol, f"step {t}: y_t vs reference")
        assert_close(h, expected_h, tol, f"step {t}: h vs reference")
        assert_close(c, expected_c, tol, f"step {t}: c vs reference")
        assert_close(y_t, full_out[:, t], tol, f"step {t}: y_t vs the full sequence")
    assert_close(h, full_h_n, tol, "stepped h vs h_n")
    assert_close(c, full_c_n, tol, "stepped c vs c_n")


def test_step_starts_from_initial_state(rng):
    lstm = make_layer(2, False, 0, np.float64, random_state=7)
    x_t = rng.standard_normal((4, lstm.input_size))
    h0, c0 = lstm.initial_state(batch_size=4)
    assert h0.shape == (2, 4, 4) and c0.shape == (2, 4, 4)
    assert not np.any(h0) and not np.any(c0)
    y_t, (h, c) = lstm.step(x_t, (h0, c0))
    expected_y, (expected_h, expected_c) = reference_step(lstm.state_dict(), x_t, h0, c0, num_layers=2,
                                                          hidden_size=4)
    assert_close(y_t, expected_y, 1e-10, "y_t")
    assert_close(h, expected_h, 1e-10, "h")
    assert_close(c, expected_c, 1e-10, "c")



@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("variant", ["fortran", "byteswapped", "strided", "list", "state_list",
                                     "other_dtype", "readonly", "state_nan", "x_inf"])
def test_step_gives_the_same_result_on_and_off_the_fast_path(variant, dtype, rng):
    # step() hands exact, native, C-contiguous arrays straight to the kernel and
    # converts everything else first: both routes must agree, or both refuse.
    lstm = make_layer(2, False, 0, dtype, random_state=8)
    x_t = rng.standard_normal((3, lstm.input_size)).astype(dtype)
    h, c = (rng.standard_normal(a.shape).astype(dtype) for a in lstm.initial_state(3))
    expected_y, (expected_h, expected_c) = lstm.step(x_t, (h, c))
    other = np.float32 if dtype == np.float64 else np.float64
    state = (h, c)
    if variant == "fortran":
        x_t = np.asfortranarray(x_t)
    elif variant == "byteswapped":
        x_t = x_t.astype(x_t.dtype.newbyteorder())
        state = (h.astype(h.dtype.newbyteorder()), c)
    elif variant == "strided":
        x_t = np.repeat(x_t, 2, axis=0)[::2]
        state = (h, np.repeat(c, 2, axis=2)[:, :, ::2])
    elif variant == "list":
        x_t = x_t.tolist()
    elif variant == "state_list":
        state = [h.tolist(), c]
    elif variant == "other_dtype":
        x_t = x_t.astype(other)
        expected_y, (expected_h, expected_c) = lstm.step(x_t.astype(dtype), (h, c))
    elif variant == "readonly":
        x_t.flags.writeable = False
        h.flags.writeable = False
    elif variant in ("state_nan", "x_inf"):
        (h if variant == "state_nan" else x_t)[0, -1] = np.nan if variant == "state_nan" else np.inf
        with pytest.raises(ValueError, match="state h must be finite" if variant == "state_nan"
                           else "x_t must be finite"):
            lstm.step(x_t, (h, c))
        return
    y, (h_new, c_new) = lstm.step(x_t, state)
    assert y.dtype == dtype and h_new.dtype == dtype and c_new.dtype == dtype
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(h_new, expected_h)
    np.testing.assert_array_equal(c_new, expected_c)


def _general_path(lstm, x, state=None):
    """``lstm(x, state)`` through the general path, which the sequence fast path must match."""
    out, state_n, _ = lstm._forward(x, state, None, train=False, rng=None)
    return out, state_n


def _assert_same_call(got, want):
    out, (h_n, c_n) = got
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(h_n, want[1][0])
    np.testing.assert_array_equal(c_n, want[1][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("structure", ["L1-uni-proj0", "L2-bi-proj0", "L2-uni-proj2", "L3-bi-proj2"])
def test_sequence_calls_give_the_same_bits_on_and_off_the_fast_path(structure, dtype, rng, monkeypatch):
    # A sequence call without lengths hands exact arrays straight to the
    # kernel (SequencePlan); everything else takes the general path. Batches
    # of 1, 5 and 40 use both input-term variants (fused from 4 rows at a
    # SIMD level), added to one plan in turn; 24 and 40 rows make chunks of
    # 3 and 2 steps here, so calls of 7 steps span several.
    monkeypatch.setattr(pylstm._layer, "_CHUNK_ROWS", 80)
    monkeypatch.setattr(pylstm._layer, "_MIN_CHUNK_STEPS", 2)
    num_layers, bidirectional, proj_size = STRUCTURES[structure]
    lstm = make_layer(num_layers, bidirectional, proj_size, dtype, input_size=6, hidden_size=20,
                      random_state=int(rng.integers(2**31)))
    for batch, steps, with_state in [(1, 1, False), (5, 7, True), (1, 7, True), (40, 7, False),
                                     (24, 7, True), (5, 2, False)]:
        inputs = random_inputs(lstm, batch, steps, rng, state=with_state)
        x, state = inputs["x"], inputs["state"]
        plan = lstm._prepared("sequence plan", lstm._sequence_plan)
        fast = plan.forward(x, state, lstm._sequence_weights)
        assert fast is not None, (batch, steps)
        want = _general_path(lstm, x, state)
        _assert_same_call(fast, want)
        _assert_same_call(lstm(x, state), want)
        expected = oracle(lstm, inputs)
        assert_close(fast[0], expected["out"], TOLERANCE[dtype], f"out, batch {batch}")


@pytest.mark.parametrize("variant", ["fortran", "byteswapped", "strided", "list", "state_list",
                                     "other_dtype", "readonly", "state_shape", "x_nan", "state_inf"])
def test_sequence_fast_path_declines_what_the_kernel_cannot_read_as_is(variant, rng):
    lstm = make_layer(2, True, 0, np.float32, random_state=9)
    inputs = random_inputs(lstm, 3, 5, rng)
    x, (h, c) = inputs["x"], inputs["state"]
    want = _general_path(lstm, x, (h, c))
    state = (h, c)
    readable = False
    if variant == "fortran":
        x = np.asfortranarray(x)
    elif variant == "byteswapped":
        state = (h, c.astype(c.dtype.newbyteorder()))
    elif variant == "strided":
        x = np.repeat(x, 2, axis=2)[:, :, ::2]
    elif variant == "list":
        x = x.tolist()
    elif variant == "state_list":
        state = [h, c]
    elif variant == "other_dtype":
        x = x.astype(np.float64)
    elif variant == "readonly":  # read as it is: the kernel only reads x and the state
        x.flags.writeable = False
        h.flags.writeable = False
        readable = True
    elif variant == "state_shape":
        state = (h[:, :2], c[:, :2])
    elif variant in ("x_nan", "state_inf"):
        (x if variant == "x_nan" else c)[0, 0, -1] = np.nan if variant == "x_nan" else np.inf
    plan = lstm._prepared("sequence plan", lstm._sequence_plan)
    taken = plan.forward(x, state, lstm._sequence_weights)
    assert (taken is not None) == readable
    if variant in ("x_nan", "state_inf"):
        with pytest.raises(ValueError, match="x must be finite" if variant == "x_nan"
                           else "state must be finite"):
            lstm(x, state)
    elif variant == "state_shape":
        with pytest.raises(ValueError, match="state h must have shape"):
            lstm(x, state)
    else:
        _assert_same_call(lstm(x, state), want)


# --------------------------------------------------------------------------
# Attributes and parameters
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_attributes_and_initial_state(dtype):
    lstm = make_layer(3, True, 2, dtype, input_size=5, hidden_size=4)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (5, 4, 3)
    assert lstm.bidirectional is True and lstm.num_directions == 2 and lstm.proj_size == 2
    assert np.dtype(lstm.dtype) == np.dtype(dtype)
    h, c = lstm.initial_state(batch_size=7)
    assert h.shape == (6, 7, 2) and c.shape == (6, 7, 4)
    assert h.dtype == dtype and c.dtype == dtype
    assert not np.any(h) and not np.any(c)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_state_dict_has_torchs_names_and_shapes(dtype):
    lstm = make_layer(2, True, 2, dtype, input_size=5, hidden_size=4)
    state_dict = lstm.state_dict()
    expected = param_shapes(5, 4, 2, True, 2)
    assert list(state_dict) == list(expected)
    for name, shape in expected.items():
        assert state_dict[name].shape == shape, name
        assert state_dict[name].dtype == dtype, name
    # Drawn like torch's: U(-1/sqrt(H), 1/sqrt(H)).
    values = np.concatenate([value.ravel() for value in state_dict.values()])
    assert np.all(np.abs(values) <= 0.5) and values.std() > 0.1


def test_random_state_makes_weights_reproducible():
    first, second = make_layer(2, random_state=11), make_layer(2, random_state=11)
    other = make_layer(2, random_state=12)
    for name, value in first.state_dict().items():
        np.testing.assert_array_equal(value, second.state_dict()[name])
    assert any(np.any(value != other.state_dict()[name]) for name, value in first.state_dict().items())


def test_load_state_dict_round_trip(rng):
    lstm = make_layer(2, True, 2, np.float64, input_size=3, hidden_size=4)
    params = init_params(3, 4, 2, True, 2, rng)
    lstm.load_state_dict(params)
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(value, params[name])
    # The oracle on the loaded weights is the layer's output.
    inputs = random_inputs(lstm, 2, 3, rng)
    out, _ = lstm(inputs["x"], state=inputs["state"])
    h0, c0 = inputs["state"]
    expected, _, _, _ = reference_forward(params, inputs["x"], h0, c0, **oracle_config(lstm))
    assert_close(out, expected, 1e-10, "out after load_state_dict")
    # state_dict hands out copies: editing them leaves the layer alone.
    lstm.state_dict()["weight_ih_l0"][...] = 0
    np.testing.assert_array_equal(lstm.state_dict()["weight_ih_l0"], params["weight_ih_l0"])


def test_load_state_dict_rejects_wrong_shapes_and_names():
    lstm = make_layer(2, False, 0, np.float64, input_size=3, hidden_size=4)
    state_dict = lstm.state_dict()
    with pytest.raises(ValueError, match="shape"):
        lstm.load_state_dict(dict(state_dict, weight_hh_l1=np.zeros((16, 3))))
    missing = dict(state_dict)
    del missing["bias_hh_l0"]
    with pytest.raises((KeyError, ValueError), match="bias_hh_l0"):
        lstm.load_state_dict(missing)


# --------------------------------------------------------------------------
# torch as a second oracle
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_on_random_configs(seed, torch_oracle):
    rng = np.random.default_rng(1000 + seed)
    num_layers = int(rng.integers(1, 4))
    bidirectional = bool(rng.integers(2))
    hidden_size = int(rng.integers(2, 7))
    proj_size = int(rng.integers(0, hidden_size)) if rng.random() < 0.5 else 0
    input_size, batch, steps = (int(n) for n in rng.integers(1, 7, 3))
    lengths_kind = [None, "full", "mixed"][seed % 3]
    where = (f"[seed {seed}: layers={num_layers}, bidirectional={bidirectional}, hidden={hidden_size}, "
             f"proj={proj_size}, input={input_size}, batch={batch}, time={steps}, lengths={lengths_kind}]")
    lstm = make_layer(num_layers, bidirectional, proj_size, np.float64, input_size, hidden_size, random_state=seed)
    inputs = random_inputs(lstm, batch, steps, rng, lengths_kind, state=seed % 2 == 0)
    module = torch_oracle.module(lstm.state_dict(), input_size=input_size, **oracle_config(lstm))
    h0, c0 = inputs["state"] if inputs["state"] is not None else (None, None)
    expected = torch_oracle.run(module, inputs["x"], h0, c0, inputs["lengths"], inputs["grad_out"],
                                *inputs["grad_state"])

    out, (h_n, c_n), cache = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    grads = lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])
    tol = 1e-10
    assert_close(out, expected["out"], tol, f"{where} out")
    assert_close(h_n, expected["h_n"], tol, f"{where} h_n")
    assert_close(c_n, expected["c_n"], tol, f"{where} c_n")
    assert_close(grads.input, expected["grad_x"], tol, f"{where} grad input")
    assert_close(grads.state[0], expected["grad_h0"], tol, f"{where} grad h0")
    assert_close(grads.state[1], expected["grad_c0"], tol, f"{where} grad c0")
    for name, value in expected["grad_params"].items():
        assert_close(grads.params[name], value, tol, f"{where} grad {name}")


def test_matches_torch_in_float32(rng, torch_oracle):
    lstm = make_layer(2, True, 2, np.float32, input_size=4, hidden_size=5, random_state=8)
    inputs = random_inputs(lstm, 4, 6, rng, "mixed")
    module = torch_oracle.module(lstm.state_dict(), input_size=4, dtype=np.float32, **oracle_config(lstm))
    expected = torch_oracle.run(module, inputs["x"], *inputs["state"], inputs["lengths"], inputs["grad_out"],
                                *inputs["grad_state"])
    out, (h_n, c_n), cache = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=inputs["lengths"])
    grads = lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])
    tol = 1e-5
    assert_close(out, expected["out"], tol, "float32 out")
    assert_close(h_n, expected["h_n"], tol, "float32 h_n")
    assert_close(c_n, expected["c_n"], tol, "float32 c_n")
    assert_close(grads.input, expected["grad_x"], tol, "float32 grad input")
    for name, value in expected["grad_params"].items():
        assert_close(grads.params[name], value, tol, f"float32 grad {name}")


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_from_torch(batch_first, dtype, rng, torch_oracle):
    torch = torch_oracle.torch
    torch.manual_seed(0)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    module = torch.nn.LSTM(4, 5, num_layers=2, bidirectional=True, proj_size=3, batch_first=batch_first,
                           dtype=torch_dtype)
    lstm = pylstm.LSTM.from_torch(module)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional, lstm.proj_size) == (
        4, 5, 2, True, 3)
    assert np.dtype(lstm.dtype) == np.dtype(dtype)
    torch_state = module.state_dict()
    assert list(lstm.state_dict()) == list(torch_state)
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(value, torch_state[name].numpy(), err_msg=name)

    x = rng.standard_normal((3, 6, 4)).astype(dtype)
    with torch.no_grad():
        # pylstm is always batch-first, whatever the module says.
        torch_x = torch.from_numpy(x if batch_first else x.transpose(1, 0, 2).copy())
        torch_out, (torch_h_n, torch_c_n) = module(torch_x)
    torch_out = torch_out.numpy() if batch_first else torch_out.numpy().transpose(1, 0, 2)
    out, (h_n, c_n) = lstm(x)
    tol = TOLERANCE[dtype]
    assert_close(out, torch_out, tol, "from_torch out")
    assert_close(h_n, torch_h_n.numpy(), tol, "from_torch h_n")
    assert_close(c_n, torch_c_n.numpy(), tol, "from_torch c_n")


def test_from_torch_without_biases(rng, torch_oracle):
    torch = torch_oracle.torch
    torch.manual_seed(2)
    module = torch.nn.LSTM(3, 4, num_layers=2, bias=False, bidirectional=True, batch_first=True,
                           dtype=torch.float64)
    lstm = pylstm.LSTM.from_torch(module)
    assert list(lstm.state_dict()) == list(module.state_dict())
    x = rng.standard_normal((3, 5, 3))
    with torch.no_grad():
        torch_out, (torch_h_n, torch_c_n) = module(torch.from_numpy(x))
    out, (h_n, c_n) = lstm(x)
    assert_close(out, torch_out.numpy(), 1e-10, "bias=False out")
    assert_close(c_n, torch_c_n.numpy(), 1e-10, "bias=False c_n")


def test_state_dict_round_trip_through_torch(rng, torch_oracle):
    torch = torch_oracle.torch
    torch.manual_seed(1)
    source = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, batch_first=True,
                           dtype=torch.float64)
    lstm = make_layer(2, True, 2, np.float64, input_size=3, hidden_size=4, random_state=9)
    lstm.load_state_dict(source.state_dict())  # torch tensors, as they come
    target = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, batch_first=True,
                           dtype=torch.float64)
    target.load_state_dict({name: torch.from_numpy(value) for name, value in lstm.state_dict().items()})
    for name, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[name]), name


# --------------------------------------------------------------------------
# Inputs that are not float arrays of the layer's dtype
# --------------------------------------------------------------------------
def _fortran(x):
    return np.asfortranarray(x)


def _strided(x):
    wide = np.zeros((x.shape[0], 2 * x.shape[1], 2 * x.shape[2]), x.dtype)
    wide[:, ::2, ::2] = x
    return wide[:, ::2, ::2]


def _read_only(x):
    x = x.copy()
    x.setflags(write=False)
    return x


LAYOUTS = {
    "int64": lambda x: x.astype(np.int64),
    "int32": lambda x: x.astype(np.int32),
    "float16": lambda x: x.astype(np.float16),
    "fortran": _fortran,
    "strided": _strided,
    "read-only": _read_only,
    "list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_any_real_input_layout_works(layout, dtype, rng):
    lstm = make_layer(2, True, 0, dtype, random_state=10)
    # Small integers survive every conversion exactly, so results must agree.
    x = rng.integers(-3, 4, (3, 4, lstm.input_size)).astype(np.float64)
    h0, c0 = (rng.integers(-2, 3, shape).astype(np.float64) for shape in state_shapes(lstm, 3))
    lengths = np.array([4, 1, 3])
    expected_out, (expected_h, expected_c) = lstm(x.astype(dtype), state=(h0.astype(dtype), c0.astype(dtype)),
                                                  lengths=lengths)
    convert = LAYOUTS[layout]
    out, (h_n, c_n) = lstm(convert(x), state=(convert(h0), convert(c0)), lengths=lengths.astype(np.int32))
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    assert_close(out, expected_out, tol, f"{layout} out")
    assert_close(h_n, expected_h, tol, f"{layout} h_n")
    assert_close(c_n, expected_c, tol, f"{layout} c_n")

    _, _, cache = lstm.forward_train(convert(x), state=(convert(h0), convert(c0)), lengths=lengths)
    grad_out = rng.integers(-2, 3, out.shape).astype(np.float64)
    grads = lstm.backward(cache, convert(grad_out))
    _, _, reference_cache = lstm.forward_train(x.astype(dtype), state=(h0.astype(dtype), c0.astype(dtype)),
                                               lengths=lengths)
    expected_grads = lstm.backward(reference_cache, grad_out.astype(dtype))
    assert_close(grads.input, expected_grads.input, tol, f"{layout} grad input")


def test_inputs_are_not_modified(rng):
    lstm = make_layer(2, True, 2, np.float64, random_state=12)
    inputs = random_inputs(lstm, 3, 4, rng, "mixed")
    arrays = {"x": inputs["x"], "h0": inputs["state"][0], "c0": inputs["state"][1], "lengths": inputs["lengths"],
              "grad_out": inputs["grad_out"], "dh_n": inputs["grad_state"][0], "dc_n": inputs["grad_state"][1]}
    copies = {name: array.copy() for name, array in arrays.items()}
    for lengths in (inputs["lengths"], None):  # without lengths the state is carried in place
        lstm(inputs["x"], state=inputs["state"], lengths=lengths)
        _, _, cache = lstm.forward_train(inputs["x"], state=inputs["state"], lengths=lengths)
        lstm.backward(cache, inputs["grad_out"], inputs["grad_state"])
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, copies[name], err_msg=f"{name} was modified")


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def _with_nan(array, value=np.nan):
    array = np.array(array, dtype=np.float64)
    array.flat[array.size // 2] = value
    return array


BATCH, STEPS, FEATURES = 3, 4, 3
GOOD_X = np.ones((BATCH, STEPS, FEATURES))
# Layer below: 2 layers, unidirectional, hidden 4, so states are (2, 3, 4).
GOOD_STATE = (np.zeros((2, BATCH, 4)), np.zeros((2, BATCH, 4)))

BAD_CALLS = {
    "x 2-d": (dict(x=np.ones((BATCH, FEATURES))), ValueError, "dimension"),
    "x 4-d": (dict(x=np.ones((BATCH, STEPS, FEATURES, 1))), ValueError, "dimension"),
    "x wrong features": (dict(x=np.ones((BATCH, STEPS, FEATURES + 1))), ValueError, "features"),
    "x empty batch": (dict(x=np.ones((0, STEPS, FEATURES))), ValueError, "(?i)batch|sequence|empty|shape"),
    "x empty time": (dict(x=np.ones((BATCH, 0, FEATURES))), ValueError, "(?i)time|step|empty|shape"),
    "x nan": (dict(x=_with_nan(GOOD_X)), ValueError, "finite"),
    "x inf": (dict(x=_with_nan(GOOD_X, np.inf)), ValueError, "finite"),
    "x object": (dict(x=GOOD_X.astype(object)), (TypeError, ValueError), "dtype"),
    "x complex": (dict(x=GOOD_X.astype(complex)), (TypeError, ValueError), "dtype|complex"),
    "x strings": (dict(x=np.full((BATCH, STEPS, FEATURES), "a")), (TypeError, ValueError), "dtype"),
    "lengths zero": (dict(lengths=[0, 1, 2]), ValueError, "lengths"),
    "lengths negative": (dict(lengths=[-1, 1, 2]), ValueError, "lengths"),
    "lengths past time": (dict(lengths=[STEPS + 1, 1, 2]), ValueError, "lengths"),
    "lengths too few": (dict(lengths=[1, 2]), ValueError, "lengths"),
    "lengths too many": (dict(lengths=[1, 2, 3, 4]), ValueError, "lengths"),
    "lengths 2-d": (dict(lengths=[[1, 2, 3]]), ValueError, "lengths"),
    "lengths fractional": (dict(lengths=[1.5, 2, 3]), (TypeError, ValueError), "lengths"),
    "lengths strings": (dict(lengths=["1", "2", "3"]), (TypeError, ValueError), "lengths"),
    "h0 wrong layers": (dict(state=(np.zeros((1, BATCH, 4)), GOOD_STATE[1])), ValueError, "shape"),
    "h0 wrong batch": (dict(state=(np.zeros((2, BATCH + 1, 4)), GOOD_STATE[1])), ValueError, "shape"),
    "c0 wrong size": (dict(state=(GOOD_STATE[0], np.zeros((2, BATCH, 5)))), ValueError, "shape"),
    "h0 2-d": (dict(state=(np.zeros((BATCH, 4)), GOOD_STATE[1])), ValueError, "dimension|shape"),
    "state not a pair": (dict(state=(GOOD_STATE[0],)), (TypeError, ValueError), "state"),
    "h0 nan": (dict(state=(_with_nan(GOOD_STATE[0]), GOOD_STATE[1])), ValueError, "finite"),
    "c0 inf": (dict(state=(GOOD_STATE[0], _with_nan(GOOD_STATE[1], -np.inf))), ValueError, "finite"),
    "h0 complex": (dict(state=(GOOD_STATE[0].astype(complex), GOOD_STATE[1])), (TypeError, ValueError),
                   "dtype|complex"),
}


@pytest.mark.parametrize("method", ["__call__", "forward_train"])
@pytest.mark.parametrize("bad_call", list(BAD_CALLS))
def test_bad_input_is_rejected_with_a_clear_message(bad_call, method):
    lstm = make_layer(2, False, 0, np.float64, input_size=FEATURES, hidden_size=4)
    overrides, error, message = BAD_CALLS[bad_call]
    arguments = dict(dict(x=GOOD_X, state=GOOD_STATE, lengths=None), **overrides)
    with pytest.raises(error, match=message):
        getattr(lstm, method)(arguments["x"], state=arguments["state"], lengths=arguments["lengths"])


def test_float64_input_too_large_for_float32_is_rejected():
    lstm = make_layer(1, False, 0, np.float32, input_size=FEATURES)
    with pytest.raises(ValueError, match="(?i)large|finite|float32"):
        lstm(np.full((BATCH, STEPS, FEATURES), 1e300))


def test_step_rejects_bidirectional_and_bad_shapes():
    bidirectional = make_layer(1, True, 0, np.float64, input_size=FEATURES)
    with pytest.raises(ValueError, match="bidirectional"):
        bidirectional.step(np.ones((BATCH, FEATURES)), bidirectional.initial_state(BATCH))
    lstm = make_layer(2, False, 0, np.float64, input_size=FEATURES, hidden_size=4)
    with pytest.raises(ValueError, match="dimension"):
        lstm.step(np.ones((BATCH, 1, FEATURES)), GOOD_STATE)
    with pytest.raises(ValueError, match="features"):
        lstm.step(np.ones((BATCH, FEATURES + 1)), GOOD_STATE)
    with pytest.raises(ValueError, match="shape"):
        lstm.step(np.ones((BATCH, FEATURES)), (np.zeros((2, BATCH + 1, 4)), GOOD_STATE[1]))
    with pytest.raises(ValueError, match="finite"):
        lstm.step(_with_nan(np.ones((BATCH, FEATURES))), GOOD_STATE)


def test_backward_rejects_a_used_cache_and_wrong_gradients():
    lstm = make_layer(2, False, 0, np.float64, input_size=FEATURES, hidden_size=4)
    out, _, cache = lstm.forward_train(GOOD_X)
    with pytest.raises(ValueError, match="shape"):
        lstm.backward(cache, np.ones((BATCH, STEPS + 1, 4)))
    with pytest.raises(ValueError, match="shape"):
        lstm.backward(cache, np.ones((BATCH, STEPS, 5)))
    with pytest.raises(ValueError, match="shape"):
        lstm.backward(cache, None, (np.zeros((2, BATCH, 3)), GOOD_STATE[1]))
    with pytest.raises(ValueError, match="finite"):
        lstm.backward(cache, _with_nan(np.ones(out.shape)))
    # The failed calls above must not have used the cache up.
    lstm.backward(cache, np.ones(out.shape))
    with pytest.raises(ValueError, match="(?i)once|already|used|consumed|twice"):
        lstm.backward(cache, np.ones(out.shape))


@pytest.mark.parametrize("dtype, proj_size", [(np.float32, 0), (np.float64, 2)])
def test_backward_differentiates_the_forward_pass_even_after_the_weights_change(dtype, proj_size):
    """An optimizer may write to the parameters between forward_train and backward (in
    place, through a view held all along): the gradients must stay those of that pass."""
    lstm = make_layer(2, True, proj_size, dtype, input_size=FEATURES, hidden_size=4)
    grad = np.random.default_rng(3).standard_normal(lstm(GOOD_X)[0].shape)
    flat = lstm.flat_parameters            # a view, alive across the calls
    before = flat.copy()
    _, _, cache = lstm.forward_train(GOOD_X)
    want = lstm.backward(lstm.forward_train(GOOD_X)[2], grad)
    flat *= 1.5                            # "optimizer step" before backward
    lstm.load_state_dict({k: v * 0.5 for k, v in lstm.state_dict().items()})
    got = lstm.backward(cache, grad)
    np.testing.assert_array_equal(got.flat, want.flat)
    np.testing.assert_array_equal(got.input, want.input)
    assert not np.array_equal(lstm.flat_parameters, before)


@pytest.mark.parametrize("dtype, proj_size", [(np.float32, 0), (np.float64, 3)])
def test_training_buffers_reused_across_calls_change_nothing(dtype, proj_size):
    """backward hands the cache's work buffers (gates, states, packed inputs) to the next
    forward_train: whatever they held must not leak into a later pass, including one with
    other shapes or lengths, or two caches alive at once."""
    lstm = pylstm.LSTM(FEATURES, 8, num_layers=2, bidirectional=True, proj_size=proj_size,
                       dtype=dtype, random_state=0)
    rng = np.random.default_rng(4)
    P = proj_size or 8

    def case(batch, steps, with_lengths):
        x = rng.standard_normal((batch, steps, FEATURES))
        lengths = rng.integers(1, steps + 1, batch) if with_lengths else None
        return x, lengths, rng.standard_normal((batch, steps, 2 * P))

    def grads(layer, x, lengths, g, cache=None):
        if cache is None:
            cache = layer.forward_train(x, lengths=lengths)[2]
        result = layer.backward(cache, g)
        return result.flat, result.input, *result.state

    def fresh_layer():
        layer = pylstm.LSTM(FEATURES, 8, num_layers=2, bidirectional=True,
                            proj_size=proj_size, dtype=dtype)
        layer.load_state_dict(lstm.state_dict())
        return layer

    cases = [case(5, 7, False), case(5, 7, True), case(3, 9, True), case(5, 7, False)]
    fresh = [grads(fresh_layer(), *c) for c in cases]
    for c, want in zip(cases, fresh):          # each pass reuses the last one's buffers
        for a, b in zip(grads(lstm, *c), want):
            np.testing.assert_array_equal(a, b)
    (x1, l1, g1), (x2, l2, g2) = cases[0], cases[1]
    first = lstm.forward_train(x1, lengths=l1)[2]
    second = lstm.forward_train(x2, lengths=l2)[2]   # both alive: no buffer shared
    for a, b in zip(grads(lstm, x2, l2, g2, second), fresh[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(grads(lstm, x1, l1, g1, first), fresh[0]):
        np.testing.assert_array_equal(a, b)


def test_constructor_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="proj_size"):
        pylstm.LSTM(input_size=3, hidden_size=4, proj_size=4)
    with pytest.raises(ValueError, match="hidden_size"):
        pylstm.LSTM(input_size=3, hidden_size=0)
    with pytest.raises(ValueError, match="dropout"):
        pylstm.LSTM(input_size=3, hidden_size=4, num_layers=2, dropout=1.5)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        pylstm.LSTM(input_size=3, hidden_size=4, dtype=np.int32)


@pytest.mark.parametrize("dtype, proj_size", [(np.float32, 0), (np.float32, 4), (np.float64, 4)])
def test_writable_views_keep_inference_in_step_with_the_parameters(dtype, proj_size):
    """Inference caches kernel-ready weights (SIMD panels, and w_ih.T, w_hh.T, w_hr.T packed
    for the GEMM); writes through views must never be missed."""
    lstm = pylstm.LSTM(3, 16, proj_size=proj_size, dtype=dtype, random_state=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(dtype)
    before, _ = lstm(x)
    view = lstm.parameters()["weight_hh_l0"]
    lstm(x)                      # a call while the view is alive
    view *= 0.5                  # then a write through the held view
    after, _ = lstm(x)
    np.testing.assert_array_equal(after, _fresh_copy(lstm)(x)[0])
    assert not np.array_equal(before, after)
    del view
    flat = lstm.flat_parameters
    flat -= 0.01
    del flat
    np.testing.assert_array_equal(lstm(x)[0], _fresh_copy(lstm)(x)[0])
    y0, _ = lstm.step(x[:, 0])
    lstm.flat_parameters += 0.01
    y1, _ = lstm.step(x[:, 0])
    np.testing.assert_array_equal(y1, _fresh_copy(lstm).step(x[:, 0])[0])
    assert not np.array_equal(y0, y1)


def _fresh_copy(lstm):
    copy = pylstm.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers,
                       proj_size=lstm.proj_size, dtype=lstm.dtype)
    copy.load_state_dict(lstm.state_dict())
    return copy
