"""The SIMD recurrent kernel at every level this CPU has, against the NumPy oracle.

Shapes are chosen to cover full unit blocks (8 or 16 lanes), a partial last
block, full register tiles of batch rows and a partial last tile.
"""
import os

import numpy as np
import pytest

import pylstm
from pylstm import _kernel
from reference import assert_close, reference_backward, reference_forward

LEVELS = {"portable": 0, "avx2": 1, "avx512": 2}
AVAILABLE = [name for name, level in LEVELS.items() if level <= _kernel.cpu_level()]


@pytest.fixture(params=AVAILABLE)
def simd(request, monkeypatch):
    monkeypatch.setenv("PYLSTM_SIMD", request.param)
    assert _kernel.simd_level() == LEVELS[request.param]
    return request.param


def test_env_var_caps_the_level(monkeypatch):
    monkeypatch.setenv("PYLSTM_SIMD", "portable")
    assert _kernel.simd_level() == 0
    monkeypatch.delenv("PYLSTM_SIMD")
    assert _kernel.simd_level() == _kernel.cpu_level()


def _sigmoid64(v):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


@pytest.mark.parametrize("which, exact, bound", [(0, _sigmoid64, 1.5e-7), (1, np.tanh, 2.8e-7)])
def test_vector_activations_are_accurate(which, exact, bound):
    """Documented bounds (docs/kernel.md): sigmoid 1.5e-7, tanh 2.8e-7, relative and absolute."""
    x = np.concatenate([np.linspace(-30, 30, 100_003), [0.0, -0.0, 1e-30, -1e-30, 1e-6, 88.5,
                                                      -88.5, 200.0, -200.0, 3e38, -3e38]])
    x = x.astype(np.float32)
    want = exact(x.astype(np.float64))
    for name in AVAILABLE[1:]:
        got = np.empty_like(x)
        _kernel.vector_activation(LEVELS[name], which, x, got)
        assert np.all(np.isfinite(got))
        visible = np.abs(want) > 1e-30
        rel = np.abs(got[visible] - want[visible]) / np.abs(want[visible])
        assert rel.max() < bound, (name, rel.max())
        assert np.abs(got - want).max() < bound, (name, np.abs(got - want).max())
        assert np.abs(got).max() <= 1.0
        _assert_nan_propagates(LEVELS[name], which, np.float32)


@pytest.mark.parametrize("which, exact", [(0, _sigmoid64), (1, np.tanh)])
def test_float64_vector_activations_are_accurate(which, exact):
    """float64's cell update (every level): within 5e-16 of libm, relative and absolute."""
    x = np.concatenate([np.linspace(-40, 40, 400_001), np.geomspace(1e-300, 20, 20_000),
                        -np.geomspace(1e-300, 20, 20_000),
                        [0.0, -0.0, 0.625, -0.625, 708.5, -708.5, 800.0, -800.0, 1e300, -1e300]])
    want = exact(x)
    for level in range(_kernel.cpu_level() + 1):
        got = np.empty_like(x)
        _kernel.vector_activation(level, which, x, got)
        assert np.all(np.isfinite(got)) and np.abs(got).max() <= 1.0
        visible = np.abs(want) > 1e-300
        rel = np.abs(got[visible] - want[visible]) / np.abs(want[visible])
        assert rel.max() < 5e-16, (level, rel.max(), x[visible][rel.argmax()])
        assert np.abs(got - want).max() < 5e-16, level
        _assert_nan_propagates(level, which, np.float64)


def test_sigmoid_far_below_zero_is_exactly_zero():
    """A gate closed by a huge pre-activation is 0, as in libm: the clamped exp
    used to leave ~4e-39, which a huge weight at the next step turned into a
    visible error (found by the fuzz suite)."""
    x = np.array([-3e38, -1e37, -1e4, -200.0, -89.0] * 5, np.float32)
    for level in range(1, _kernel.cpu_level() + 1):
        got = np.empty_like(x)
        _kernel.vector_activation(level, 0, x, got)
        assert np.all(got == 0), (level, got[:5])
    for level in range(_kernel.cpu_level() + 1):  # float64's cell update, every level
        x64 = np.array([-1e308, -1e300, -1e4, -800.0, -745.2] * 3)
        got = np.empty_like(x64)
        _kernel.vector_activation(level, 0, x64, got)
        assert np.all(got == 0), (level, got[:5])


def test_output_gate_closed_by_a_huge_weight_matches_reference(simd):
    """h = 0 exactly when the output gate saturates shut, so the next step's
    h @ w_hh is 0 too, not 1e-40 * 8.5e37."""
    rng = np.random.default_rng(0)
    lstm = pylstm.LSTM(2, 1, random_state=0)
    params = {k: rng.uniform(-1, 1, v.shape).astype(np.float32)
              for k, v in lstm.state_dict().items()}
    params["weight_hh_l0"][3, 0] = 8.5e37  # the output gate's recurrent weight
    lstm.load_state_dict(params)
    x = rng.standard_normal((3, 6, 2)).astype(np.float32)
    want = reference_forward({k: v.astype(np.float64) for k, v in params.items()}, x,
                             num_layers=1, bidirectional=False, hidden_size=1, proj_size=0)[0]
    assert np.any(want == 0)  # the gate does close
    assert_close(lstm(x)[0], want, 1e-5)


def _assert_nan_propagates(level, which, dtype):
    """A NaN (an overflowed sum: inf - inf) must come out NaN, not clamped to a number."""
    x = np.array([np.nan, 1.0, np.inf, -np.inf] * 9, dtype)  # full vectors and a tail
    got = np.empty_like(x)
    _kernel.vector_activation(level, which, x, got)
    assert np.isnan(got[::4]).all() and not np.isnan(got[1::4]).any(), (level, got[:4])


@pytest.mark.parametrize("hidden, proj, batch, bidirectional, use_lengths", [
    (16, 0, 1, False, False),     # one full 16-lane block, one row
    (40, 0, 13, True, True),      # 2.5 blocks (AVX-512) / 5 blocks (AVX2); 2 full tiles + 1 row
    (24, 0, 6, False, True),      # AVX-512 partial block only; one exact tile
    (32, 12, 7, True, False),     # projection
    (64, 0, 20, False, True),
])
@pytest.mark.parametrize("input_term", ["fused", "separate"])
def test_simd_forward_and_backward_match_reference(simd, hidden, proj, batch, bidirectional,
                                                   use_lengths, input_term, monkeypatch):
    rng = np.random.default_rng(hidden * 1000 + batch)
    layers, time, features = 2, 9, 5
    lstm = pylstm.LSTM(features, hidden, layers, bidirectional=bidirectional, proj_size=proj,
                       random_state=1)
    if input_term == "separate":
        _only_w_hh_fits_in_l2(monkeypatch, lstm)
    params64 = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    x = rng.standard_normal((batch, time, features)).astype(np.float32)
    lengths = rng.integers(1, time + 1, size=batch) if use_lengths else None
    config = dict(num_layers=layers, bidirectional=bidirectional, hidden_size=hidden,
                  proj_size=proj)
    want_out, want_h, want_c, tape = reference_forward(params64, x, lengths=lengths, **config)

    out, (h_n, c_n) = lstm(x, lengths=lengths)
    assert_close(out, want_out, 1e-5)
    assert_close(h_n, want_h, 1e-5)
    assert_close(c_n, want_c, 1e-5)

    out_t, _, cache = lstm.forward_train(x, lengths=lengths)
    assert_close(out_t, want_out, 1e-5)
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    grads = lstm.backward(cache, grad_out)
    want_dx, _, want_dp = reference_backward(params64, tape, grad_out)
    assert_close(grads.input, want_dx, 1e-4)
    for name, value in want_dp.items():
        assert_close(grads.params[name], value, 1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("proj", [0, 4])
def test_backward_over_several_chunks_matches_reference(simd, proj, dtype):
    """Backward takes the weight gradients and dL/dx a chunk of at least 256
    rows at a time: ~600 rows with mixed lengths make three chunks per
    direction, the reverse direction's running up the rows."""
    rng = np.random.default_rng(7 + proj)
    batch, time, features, hidden = 48, 25, 5, 8
    lstm = pylstm.LSTM(features, hidden, 2, bidirectional=True, proj_size=proj, dtype=dtype,
                       random_state=3)
    x = rng.standard_normal((batch, time, features)).astype(dtype)
    lengths = rng.integers(1, time + 1, size=batch)
    assert 512 < lengths.sum() < 768
    params64 = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    *_, tape = reference_forward(params64, x, lengths=lengths, num_layers=2, bidirectional=True,
                                 hidden_size=hidden, proj_size=proj)
    _, _, cache = lstm.forward_train(x, lengths=lengths)
    grad_out = rng.standard_normal((batch, time, 2 * (proj or hidden))).astype(dtype)
    grads = lstm.backward(cache, grad_out)
    want_dx, _, want_dp = reference_backward(params64, tape, grad_out)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert_close(grads.input, want_dx, tol)
    for name, value in want_dp.items():
        assert_close(grads.params[name], value, tol, name)


@pytest.mark.parametrize("batch", [1, 7, 13])
def test_steps_past_every_sequence_end_match_reference(simd, batch):
    """Lengths all shorter than T: the last steps have no live row, h_n is each
    row's output at its own last step, and the reverse direction starts each
    row at its end (the in-place step's row tables)."""
    rng = np.random.default_rng(batch)
    lstm = pylstm.LSTM(5, 24, 2, bidirectional=True, random_state=2)
    x = rng.standard_normal((batch, 9, 5)).astype(np.float32)
    lengths = rng.integers(1, 6, size=batch)
    params64 = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    h0 = rng.standard_normal((4, batch, 24)).astype(np.float32)
    c0 = rng.standard_normal((4, batch, 24)).astype(np.float32)
    want_out, want_h, want_c, _ = reference_forward(
        params64, x, lengths=lengths, h0=h0.astype(np.float64), c0=c0.astype(np.float64),
        num_layers=2, bidirectional=True, hidden_size=24, proj_size=0)
    out, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
    assert_close(out, want_out, 1e-5)
    assert np.all(out[:, 5:] == 0)
    assert_close(h_n, want_h, 1e-5)
    assert_close(c_n, want_c, 1e-5)


def _only_w_hh_fits_in_l2(monkeypatch, lstm):
    """Make the layer see an L2 that holds w_hh's panels but not w_ih's too,
    where it computes the input term separately."""
    monkeypatch.setattr(pylstm._layer, "_L2_BUDGET", 16 * lstm.hidden_size * lstm.output_size)
    for width in (lstm.input_size, lstm.num_directions * lstm.output_size):
        assert not lstm._fuses_input(2, 64, width)


@pytest.mark.parametrize("simd_level", AVAILABLE[1:])  # the portable path has no fused step
def test_input_term_gives_the_same_bits_fused_or_separate(simd_level, monkeypatch):
    """Computed in the step or by one GEMM first (chosen by batch and cache
    size), the input term is the same sum added in the same order."""
    monkeypatch.setenv("PYLSTM_SIMD", simd_level)
    rng = np.random.default_rng(4)
    lstm = pylstm.LSTM(5, 40, 2, bidirectional=True, random_state=0)
    x = rng.standard_normal((13, 9, 5)).astype(np.float32)
    lengths = rng.integers(1, 10, size=13)
    grad_out = rng.standard_normal((13, 9, 80)).astype(np.float32)

    def run():
        out, (h_n, c_n) = lstm(x, lengths=lengths)
        _, _, cache = lstm.forward_train(x, lengths=lengths)
        grads = lstm.backward(cache, grad_out)
        return out, h_n, c_n, grads.flat, grads.input

    level = LEVELS[simd_level]
    assert lstm._fuses_input(level, 13, 5) and lstm._fuses_input(level, 13, 80)
    fused = run()
    _only_w_hh_fits_in_l2(monkeypatch, lstm)
    assert not lstm._fuses_input(level, 13, 5) and not lstm._fuses_input(level, 13, 80)
    for a, b in zip(fused, run()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("simd_level", AVAILABLE[1:])  # the portable path's BLAS blocks by batch
@pytest.mark.parametrize("hidden_size", [37, 40])
def test_a_sequence_gets_the_same_bits_alone_or_in_any_batch(simd_level, hidden_size,
                                                             monkeypatch):
    """A row's sums do not depend on the register tile it falls in (one row,
    two, ..., a full tile), on whether its input term is fused, nor on the
    steps at which other rows end."""
    monkeypatch.setenv("PYLSTM_SIMD", simd_level)
    rng = np.random.default_rng(5)
    lstm = pylstm.LSTM(6, hidden_size, 2, random_state=0)
    x = rng.standard_normal((14, 11, 6)).astype(np.float32)
    alone, (h_alone, c_alone) = lstm(x[:1])
    for batch in (2, 3, 4, 5, 7, 8, 13, 14):
        lengths = np.r_[11, rng.integers(1, 12, size=batch - 1)]
        for kwargs in ({}, {"lengths": lengths}):
            out, (h_n, c_n) = lstm(x[:batch], **kwargs)
            assert np.array_equal(out[0], alone[0]), (batch, kwargs)
            assert np.array_equal(h_n[:, 0], h_alone[:, 0])
            assert np.array_equal(c_n[:, 0], c_alone[:, 0])
    state = lstm.initial_state(14)
    for t in range(x.shape[1]):  # step() on the whole batch
        y, state = lstm.step(x[:, t], state)
        assert np.array_equal(y[0], alone[0, t])


def test_simd_levels_agree_on_a_long_sequence(monkeypatch):
    """Errors must not grow over many steps: all levels agree with float64 to ~1e-5."""
    rng = np.random.default_rng(0)
    lstm = pylstm.LSTM(8, 48, random_state=0)
    x = rng.standard_normal((5, 400, 8)).astype(np.float32)
    lstm64 = pylstm.LSTM(8, 48, dtype=np.float64)
    lstm64.load_state_dict(lstm.state_dict())
    want, _ = lstm64(x)
    for name in AVAILABLE:
        monkeypatch.setenv("PYLSTM_SIMD", name)
        got, _ = lstm(x)
        assert np.abs(got - want).max() < 2e-5, name


def test_step_follows_a_level_change_between_calls(monkeypatch):
    """step() caches its weights per model; PYLSTM_SIMD set between calls still takes effect."""
    rng = np.random.default_rng(1)
    lstm = pylstm.LSTM(5, 20, num_layers=2, random_state=0)
    params = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    x = rng.standard_normal((3, len(AVAILABLE) * 2, 5)).astype(np.float32)
    want = reference_forward(params, x.astype(np.float64), hidden_size=20, num_layers=2,
                             bidirectional=False)[0]
    state = lstm.initial_state(3)
    for t in range(x.shape[1]):
        name = AVAILABLE[t % len(AVAILABLE)]
        monkeypatch.setenv("PYLSTM_SIMD", name)
        y, state = lstm.step(x[:, t], state)
        assert lstm._prepared("step", None).level == LEVELS[name]
        assert_close(y, want[:, t], 1e-5)


def test_sequence_calls_follow_a_level_change_between_calls(monkeypatch):
    """The sequence fast path's plan is built for one level; PYLSTM_SIMD set between calls still takes effect."""
    rng = np.random.default_rng(2)
    lstm = pylstm.LSTM(5, 20, num_layers=2, bidirectional=True, random_state=0)
    x = rng.standard_normal((6, 4, 5)).astype(np.float32)
    for name in AVAILABLE + AVAILABLE[::-1]:
        monkeypatch.setenv("PYLSTM_SIMD", name)
        out, (h_n, c_n) = lstm(x)
        assert lstm._prepared("sequence plan", None).level == LEVELS[name]
        want, (want_h, want_c), _ = lstm._forward(x, None, None, train=False, rng=None)
        assert np.array_equal(out, want) and np.array_equal(h_n, want_h) and np.array_equal(c_n, want_c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (7, 65, 3), (13, 64, 1030), (6, 130, 2049),
                                     (25, 17, 9), (9, 8, 300), (13, 40, 70), (8, 24, 1100)])
def test_reproducible_gemm_matches_numpy(dtype, m, n, k):
    """The SIMD GEMM behind every product at SIMD levels, all transpose cases, with
    tails in every dimension and K spanning several K blocks."""
    from pylstm._blas import matmul_py
    rng = np.random.default_rng(m * n * k)
    for level in (LEVELS[name] for name in AVAILABLE):
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
                want = (a.T if trans_a else a).astype(np.float64) @ \
                    (b.T if trans_b else b).astype(np.float64)
                c = rng.standard_normal((m, n)).astype(dtype)
                start = c.copy()
                matmul_py(level, trans_a, trans_b, a, b, True, c)
                tol = (1e-4 if dtype == np.float32 else 1e-12) * np.sqrt(k)
                np.testing.assert_allclose(c, want + start, rtol=tol, atol=tol)
                matmul_py(level, trans_a, trans_b, a, b, False, c)
                np.testing.assert_allclose(c, want, rtol=tol, atol=tol)


def test_results_are_bitwise_identical_at_any_thread_count():
    """Outputs and gradients do not change with the number of BLAS threads."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if _kernel.simd_level() == 0:
        pytest.skip("the portable path uses BLAS, whose sums depend on its thread count")

    def run(threads, dtype, lengths):
        with threadpoolctl.threadpool_limits(threads):
            lstm = pylstm.LSTM(16, 40, 2, bidirectional=True, dtype=dtype, random_state=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((21, 30, 16)).astype(dtype)
            lens = rng.integers(15, 31, size=21) if lengths else None
            out, _ = lstm(x, lengths=lens)
            out_t, _, cache = lstm.forward_train(x, lengths=lens)
            grads = lstm.backward(cache, np.ones_like(out_t))
            return out, grads.flat, grads.input

    for dtype in (np.float32, np.float64):
        for lengths in (False, True):
            one, two = run(1, dtype, lengths), run(2, dtype, lengths)
            for a, b in zip(one, two):
                assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, hidden_size", [(40, 64), (70, 128)])
def test_kernel_threads_give_bitwise_identical_results(simd, dtype, batch, hidden_size):
    """pylstm's own threads split steps, products, packing, transposes and the
    cell backward (by rows: at (70, 128) into three parts) without changing
    any value."""
    rng = np.random.default_rng(1)
    lstm = pylstm.LSTM(24, hidden_size, 2, bidirectional=True, dtype=dtype, random_state=0)
    x = rng.standard_normal((batch, 12, 24)).astype(dtype)
    lengths = rng.integers(1, 13, size=batch)
    grad_out = rng.standard_normal((batch, 12, 2 * hidden_size)).astype(dtype)
    results = []
    before = pylstm.get_num_threads()  # 1, unless PYLSTM_NUM_THREADS says otherwise
    for n in (1, 2, 3):
        with pylstm.threads(n):
            assert pylstm.get_num_threads() == n
            out, _ = lstm(x, lengths=lengths)
            out_t, _, cache = lstm.forward_train(x, lengths=lengths)
            grads = lstm.backward(cache, grad_out)
            results.append((out, grads.flat, grads.input))
    assert pylstm.get_num_threads() == before
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_split_runs_give_bitwise_identical_results(simd, dtype, bidirectional):
    """A batch whose steps split by rows runs each thread's rows through a whole
    run of steps, reading its own copy of the packed weights. Through several
    Adam updates (the copies must follow the weights: training repacks them in
    reused buffers) and an in-place weight change, every output and gradient
    is bitwise the one-thread result, in either direction, and runs did split."""
    from pylstm._optimizers import Adam

    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 9, 24)).astype(dtype)
    grad_out = rng.standard_normal((48, 9, 128 if bidirectional else 64)).astype(dtype)
    lengths = np.full(48, 9)
    lengths[40:] = 5    # a second run of fewer rows in each direction

    def train(threads):
        lstm = pylstm.LSTM(24, 64, bidirectional=bidirectional, dtype=dtype, random_state=0)
        flat = lstm.flat_parameters
        adam = Adam([flat.size], flat.dtype, learning_rate_init=1e-2)
        seen = []
        with pylstm.threads(threads):
            for _ in range(3):
                out_t, _, cache = lstm.forward_train(x, lengths=lengths)
                grads = lstm.backward(cache, grad_out)
                adam.step([flat], [grads.flat])
                seen += [out_t, grads.flat, grads.input]
            seen.append(lstm(x, lengths=lengths)[0])
            lstm.parameters()["weight_hh_l0"][:5] *= 0.5    # in place, through a view
            seen.append(lstm(x, lengths=lengths)[0])
        return seen

    want = train(1)
    for threads in (2, 3):
        before = _kernel._row_runs()
        got = train(threads)
        if simd != "portable":
            assert _kernel._row_runs() > before
        for a, b in zip(want, got):
            assert np.array_equal(a, b)


_CORE_TAKEN = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # workers inherit it: one core for all
import pylstm
from pylstm import _kernel
rng = np.random.default_rng(2)
lstm = pylstm.LSTM(24, 64, 2, bidirectional=True, random_state=0)
x = rng.standard_normal((40, 12, 24)).astype(np.float32)
lengths = rng.integers(1, 13, size=40)
def run():
    out, _ = lstm(x, lengths=lengths)
    out_t, _, cache = lstm.forward_train(x, lengths=lengths)
    grads = lstm.backward(cache, np.ones_like(out_t))
    return out, grads.flat, grads.input
want = run()
before = _kernel._parts_taken_over()
with pylstm.threads(2):
    got = [run() for _ in range(5)]
print(_kernel._parts_taken_over() - before)
sys.exit(0 if all(np.array_equal(a, b) for g in got for a, b in zip(want, g)) else 3)
"""


@pytest.mark.skipif(_kernel.simd_level() == 0, reason="no pylstm thread pool on the portable path")
def test_caller_runs_the_parts_a_descheduled_worker_has_not_claimed():
    """With the worker on the caller's core it rarely runs before the caller is
    done with part 0; the caller then runs the rest itself (no waiting for a
    time slice), with results bitwise those of one thread."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", _CORE_TAKEN], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(result.stdout) > 0


def test_thread_count_is_validated():
    with pytest.raises(ValueError, match="threads"):
        pylstm.set_num_threads(0)


def test_thread_pool_survives_concurrent_callers():
    """Workers are started race-free, and a busy pool makes other Python
    threads run on their own thread instead of waiting."""
    import threading
    lstm = pylstm.LSTM(24, 64, 2, random_state=0)
    x = np.random.default_rng(0).standard_normal((40, 12, 24)).astype(np.float32)
    want = lstm(x)[0]
    with pylstm.threads(2):
        for n in range(60):  # workers keep being woken right after creation
            pylstm.set_num_threads(1 + n % 3)
            assert np.array_equal(lstm(x)[0], want)
        pylstm.set_num_threads(2)
        failures = []

        def call_many():
            for _ in range(20):
                if not np.array_equal(lstm(x)[0], want):
                    failures.append(1)
        callers = [threading.Thread(target=call_many) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
        assert not failures and not any(caller.is_alive() for caller in callers)


_FORK = """
import os, signal, sys
import numpy as np
import pylstm
lstm = pylstm.LSTM(24, 64, 2, random_state=0)
x = np.random.default_rng(0).standard_normal((40, 12, 24)).astype(np.float32)
want = lstm(x)[0]
with pylstm.threads(2):
    lstm(x)  # the parent's workers exist, and spin, when it forks
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)  # a child waiting on workers it does not have would hang
        os._exit(0 if np.array_equal(lstm(x)[0], want) else 3)
    _, status = os.waitpid(pid, 0)
    assert np.array_equal(lstm(x)[0], want)  # and the parent's pool still works
code = os.waitstatus_to_exitcode(status)
print("child exit", code)
sys.exit(0 if code == 0 else 1)
"""


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason=(
    "AddressSanitizer's allocator can deadlock in a child forked from a threaded "
    "process (make sanitize once hung there on an allocator lock); the plain build "
    "tests fork"))
def test_thread_pool_is_recreated_after_fork():
    """A forked child has none of the parent's workers: its first call starts its own."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("shape", [0, 1, 7, (3, 5), (2, 3, 17)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_empty_starts_on_a_cache_line(shape, dtype):
    # the SIMD code streams these buffers with full-vector loads
    for _ in range(20):  # different heap positions
        a = _kernel.aligned_empty(shape, dtype)
        assert a.size == 0 or a.ctypes.data % 64 == 0  # an empty array has no data to stream
        assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        a.fill(1)
        assert a.sum() == a.size  # the whole buffer is ours to write


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_products_give_the_bits_of_wide_ones(dtype):
    """A product with few columns runs a narrower tile; each element is still the
    same sum in the same order (the weight gradients of a few-feature input)."""
    from pylstm._blas import matmul_py
    rng = np.random.default_rng(5)
    a = rng.standard_normal((23, 1500)).astype(dtype)
    b = rng.standard_normal((1500, 64)).astype(dtype)
    for level in (LEVELS[name] for name in AVAILABLE[1:]):
        wide = np.empty((23, 64), dtype)
        matmul_py(level, False, False, a, b, False, wide)
        for n in (1, 5, 8, 16, 24, 40):
            narrow = np.empty((23, n), dtype)
            matmul_py(level, False, False, a, np.ascontiguousarray(b[:, :n]), False, narrow)
            np.testing.assert_array_equal(narrow, wide[:, :n])


def test_aligned_empty_refuses_sizes_that_overflow():
    with pytest.raises(MemoryError, match="does not fit"):
        _kernel.aligned_empty((2**40, 2**40), np.float32)
    with pytest.raises(ValueError, match="negative"):
        _kernel.aligned_empty((3, -1), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_rows_multiplies_and_checks_shapes(dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((37, 19)).astype(dtype), rng.standard_normal((19, 3)).astype(dtype)
    out = np.empty((37, 3), dtype)
    _kernel.matmul_rows(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    for row in (0, 5, 36) if _kernel.simd_level() else ():  # a row alone: the same bits
        alone = np.empty((1, 3), dtype)
        _kernel.matmul_rows(a[row:row + 1], b, alone)
        np.testing.assert_array_equal(alone[0], out[row])
    for shapes in [((3, 4), (5, 2), (3, 2)), ((3, 4), (4, 2), (2, 2)), ((0, 4), (4, 2), (0, 2))]:
        with pytest.raises(ValueError, match="cannot multiply"):
            _kernel.matmul_rows(*(np.ones(shape, dtype) for shape in shapes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_all_finite_finds_one_bad_value_anywhere(dtype, bad, threads):
    # 200,003 values: split into three parts on three threads (65,536 or more each)
    for n in (1000, 200_003):
        values = np.random.default_rng(0).uniform(-1, 1, n).astype(dtype)
        values[[0, 1, -1]] = np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny
        parts = max(1, min(threads, n // 65536))
        edges = [n * part // parts + shift for part in range(1, parts) for shift in (-1, 0)]
        with pylstm.threads(threads):
            assert _kernel.all_finite(values)
            for position in (0, 1, 15, 16, 17, 500, n - 2, n - 1, *edges):
                spoiled = values.copy()
                spoiled[position] = bad
                assert not _kernel.all_finite(spoiled)
                assert not _kernel.all_finite(spoiled[position:position + 1])
