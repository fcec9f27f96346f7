"""Tests of the oracle itself: finite differences, self-consistency and torch.

If these fail, no verdict on pylstm drawn from ``reference.py`` can be trusted.
"""
import numpy as np
import pytest

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

# Small on purpose: finite differences run two forward passes per entry.
GRADIENT_CONFIGS = {
    "1layer": dict(num_layers=1, bidirectional=False, proj_size=0, lengths=False, state=False, dropout=False),
    "1layer-bidir-lengths-state": dict(num_layers=1, bidirectional=True, proj_size=0, lengths=True, state=True, dropout=False),
    "2layer-proj-lengths-state": dict(num_layers=2, bidirectional=False, proj_size=2, lengths=True, state=True, dropout=False),
    "2layer-bidir-proj-dropout": dict(num_layers=2, bidirectional=True, proj_size=2, lengths=True, state=True, dropout=True),
    "3layer-bidir-dropout": dict(num_layers=3, bidirectional=True, proj_size=0, lengths=False, state=False, dropout=True,
                                 batch=2, steps=3, hidden_size=2),
}


def make_case(rng, num_layers, bidirectional, proj_size, lengths, state, dropout,
              batch=3, steps=4, input_size=3, hidden_size=3):
    """Random parameters, inputs and output gradients for one configuration."""
    num_directions = 2 if bidirectional else 1
    output_size = proj_size or hidden_size
    num_states = num_layers * num_directions
    config = dict(num_layers=num_layers, bidirectional=bidirectional, hidden_size=hidden_size, proj_size=proj_size)
    case = dict(
        config=config,
        params=init_params(input_size, hidden_size, num_layers, bidirectional, proj_size, rng),
        x=rng.standard_normal((batch, steps, input_size)),
        h0=rng.standard_normal((num_states, batch, output_size)) if state else None,
        c0=rng.standard_normal((num_states, batch, hidden_size)) if state else None,
        # The first sequence is always full length and the second has one step.
        lengths=np.r_[steps, 1, rng.integers(1, steps + 1, batch - 2)] if lengths else None,
        dropout_masks=None,
        grad_out=rng.standard_normal((batch, steps, num_directions * output_size)),
        grad_h_n=rng.standard_normal((num_states, batch, output_size)),
        grad_c_n=rng.standard_normal((num_states, batch, hidden_size)),
    )
    if dropout:
        keep = 0.6
        mask_shape = (batch, steps, num_directions * output_size)
        case["dropout_masks"] = [(rng.random(mask_shape) < keep) / keep for _ in range(num_layers - 1)]
    return case


def forward(case):
    """``reference_forward`` on a case made by ``make_case``."""
    return reference_forward(
        case["params"], case["x"], case["h0"], case["c0"], case["lengths"],
        dropout_masks=case["dropout_masks"], **case["config"],
    )


def scalar_loss(case):
    """``sum(grad_out * out) + sum(grad_h_n * h_n) + sum(grad_c_n * c_n)``: its gradient is what backward computes."""
    out, h_n, c_n, _ = forward(case)
    return np.sum(case["grad_out"] * out) + np.sum(case["grad_h_n"] * h_n) + np.sum(case["grad_c_n"] * c_n)


def test_param_shapes_are_torchs():
    shapes = param_shapes(input_size=5, hidden_size=4, num_layers=2, bidirectional=True, proj_size=3)
    assert list(shapes)[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert shapes["weight_ih_l0"] == (16, 5)
    assert shapes["weight_hh_l0_reverse"] == (16, 3)
    assert shapes["weight_hr_l1_reverse"] == (3, 4)
    # The second layer reads both directions' projected outputs.
    assert shapes["weight_ih_l1"] == (16, 6)
    assert len(shapes) == 2 * 2 * 5


def test_init_params_draws_within_torchs_bound():
    params = init_params(4, hidden_size=16, num_layers=2, bidirectional=True, proj_size=0, rng=0)
    values = np.concatenate([value.ravel() for value in params.values()])
    assert np.all(np.abs(values) <= 0.25)
    assert values.std() > 0.1  # really random, not zeros


@pytest.mark.parametrize("config_name", list(GRADIENT_CONFIGS))
def test_backward_matches_finite_differences(config_name, rng):
    case = make_case(rng, **GRADIENT_CONFIGS[config_name])
    _, _, _, tape = forward(case)
    grad_x, (grad_h0, grad_c0), grad_params = reference_backward(
        case["params"], tape, case["grad_out"], case["grad_h_n"], case["grad_c_n"]
    )
    num_states, batch = case["grad_h_n"].shape[:2]
    if case["h0"] is None:
        # Zeros given explicitly, so that their gradients can be checked too.
        case["h0"] = np.zeros_like(case["grad_h_n"])
        case["c0"] = np.zeros_like(case["grad_c_n"])

    def check(name, analytic, array):
        numeric = numerical_gradient(lambda: scalar_loss(case), array)
        error = relative_error(analytic, numeric)
        assert error < 1e-6, f"{config_name}: d loss / d {name} is off by {error:.2e}"

    for name, value in case["params"].items():
        check(name, grad_params[name], value)
    check("x", grad_x, case["x"])
    check("h0", grad_h0, case["h0"])
    check("c0", grad_c0, case["c0"])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_sequence_runs_as_if_cut_to_its_length(bidirectional, rng):
    case = make_case(rng, num_layers=2, bidirectional=bidirectional, proj_size=0, lengths=True, state=True,
                     dropout=False, batch=4, steps=5)
    out, h_n, c_n, _ = forward(case)
    for b, length in enumerate(case["lengths"]):
        alone = dict(case, x=case["x"][b:b + 1, :length], h0=case["h0"][:, b:b + 1], c0=case["c0"][:, b:b + 1],
                     lengths=None)
        alone_out, alone_h_n, alone_c_n, _ = forward(alone)
        np.testing.assert_allclose(out[b, :length], alone_out[0], rtol=0, atol=1e-15)
        assert np.all(out[b, length:] == 0), "output past a sequence's end must be exactly zero"
        np.testing.assert_allclose(h_n[:, b], alone_h_n[:, 0], rtol=0, atol=1e-15)
        np.testing.assert_allclose(c_n[:, b], alone_c_n[:, 0], rtol=0, atol=1e-15)


def test_gradients_past_a_sequences_end_are_zero(rng):
    case = make_case(rng, num_layers=2, bidirectional=True, proj_size=0, lengths=True, state=False, dropout=False,
                     batch=3, steps=5)
    _, _, _, tape = forward(case)
    grad_x, _, _ = reference_backward(case["params"], tape, case["grad_out"])
    for b, length in enumerate(case["lengths"]):
        assert np.all(grad_x[b, length:] == 0)
        assert np.any(grad_x[b, :length] != 0)


@pytest.mark.parametrize("num_layers, proj_size", [(1, 0), (3, 2)])
def test_step_matches_forward(num_layers, proj_size, rng):
    case = make_case(rng, num_layers=num_layers, bidirectional=False, proj_size=proj_size, lengths=False,
                     state=True, dropout=False)
    out, h_n, c_n, _ = forward(case)
    h, c = case["h0"], case["c0"]
    for t in range(case["x"].shape[1]):
        y_t, (h, c) = reference_step(case["params"], case["x"][:, t], h, c, num_layers=num_layers,
                                     hidden_size=case["config"]["hidden_size"], proj_size=proj_size)
        np.testing.assert_allclose(y_t, out[:, t], rtol=0, atol=1e-15)
    np.testing.assert_allclose(h, h_n, rtol=0, atol=1e-15)
    np.testing.assert_allclose(c, c_n, rtol=0, atol=1e-15)


def test_integer_and_float32_inputs_are_upcast(rng):
    case = make_case(rng, num_layers=1, bidirectional=False, proj_size=0, lengths=False, state=False, dropout=False)
    case["x"] = rng.integers(-2, 3, case["x"].shape)
    case["params"] = {name: value.astype(np.float32) for name, value in case["params"].items()}
    out, _, _, _ = forward(case)
    assert out.dtype == np.float64
    upcast = dict(case, x=case["x"].astype(np.float64),
                  params={name: value.astype(np.float64) for name, value in case["params"].items()})
    np.testing.assert_array_equal(out, forward(upcast)[0])


# Wider than the gradient configs: torch is fast, and sizes that differ
# per axis catch transposed weights.
TORCH_CONFIGS = {
    "1layer": dict(num_layers=1, bidirectional=False, proj_size=0, lengths=False, state=False),
    "1layer-bidir-lengths": dict(num_layers=1, bidirectional=True, proj_size=0, lengths=True, state=True),
    "2layer-lengths-state": dict(num_layers=2, bidirectional=False, proj_size=0, lengths=True, state=True),
    "2layer-proj": dict(num_layers=2, bidirectional=False, proj_size=3, lengths=False, state=True),
    "3layer-bidir-proj-lengths": dict(num_layers=3, bidirectional=True, proj_size=3, lengths=True, state=True),
    "2layer-bidir-lengths-nostate": dict(num_layers=2, bidirectional=True, proj_size=0, lengths=True, state=False),
}


@pytest.mark.parametrize("config_name", list(TORCH_CONFIGS))
def test_matches_torch(config_name, rng, torch_oracle):
    case = make_case(rng, **TORCH_CONFIGS[config_name], dropout=False, batch=5, steps=6, input_size=4, hidden_size=5)
    out, h_n, c_n, tape = forward(case)
    grad_x, (grad_h0, grad_c0), grad_params = reference_backward(
        case["params"], tape, case["grad_out"], case["grad_h_n"], case["grad_c_n"]
    )
    module = torch_oracle.module(case["params"], input_size=4, **case["config"])
    expected = torch_oracle.run(module, case["x"], case["h0"], case["c0"], case["lengths"],
                                case["grad_out"], case["grad_h_n"], case["grad_c_n"])
    tol = 1e-10
    assert_close(out, expected["out"], tol, f"{config_name}: out")
    assert_close(h_n, expected["h_n"], tol, f"{config_name}: h_n")
    assert_close(c_n, expected["c_n"], tol, f"{config_name}: c_n")
    assert_close(grad_x, expected["grad_x"], tol, f"{config_name}: grad x")
    assert_close(grad_h0, expected["grad_h0"], tol, f"{config_name}: grad h0")
    assert_close(grad_c0, expected["grad_c0"], tol, f"{config_name}: grad c0")
    assert set(grad_params) == set(expected["grad_params"])
    for name, value in grad_params.items():
        assert_close(value, expected["grad_params"][name], tol, f"{config_name}: grad {name}")
