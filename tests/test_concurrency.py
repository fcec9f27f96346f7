"""Concurrency (issue 6): inference never mutates a model, and compiled calls release the GIL.

Many threads calling ``__call__``/``step``/``predict`` on one shared model
must get exactly (bitwise) the results of the same calls made serially on an
identical model, including on the model's very first calls, when the layer
builds its cache of kernel-ready weights. Every case runs at each SIMD level
this CPU has (``PYLSTM_SIMD`` is read per call).

The wall-time gain of 2 threads over 1 is measured by ``bench/bench_threads.py``
(benchmarks are not tests).
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

import pylstm
from pylstm import _kernel

THREADS = 8
ROUNDS = 2          # each thread runs every job this many times, in its own order
LEVELS = {"portable": 0, "avx2": 1, "avx512": 2}
AVAILABLE = [name for name, level in LEVELS.items() if level <= _kernel.cpu_level()]

# Short fits on purpose; their convergence is not the subject here.
pytestmark = pytest.mark.filterwarnings("ignore:.*maximum iterations")


@pytest.fixture(params=AVAILABLE)
def level(request, monkeypatch):
    monkeypatch.setenv("PYLSTM_SIMD", request.param)
    assert _kernel.simd_level() == LEVELS[request.param]
    return request.param


def run_threads(target, n_threads=THREADS):
    """Run ``target(index)`` in ``n_threads`` threads released together; re-raise any error."""
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def body(index):
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def twin(lstm):
    """A separate layer with the same hyperparameters and weights."""
    copy = pylstm.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, bias=lstm.bias,
                       bidirectional=lstm.bidirectional, proj_size=lstm.proj_size,
                       dtype=lstm.dtype)
    copy.load_state_dict(lstm.state_dict())
    return copy


def make_models(dtype):
    return {
        "stack": pylstm.LSTM(5, 24, num_layers=2, proj_size=7, dtype=dtype, random_state=1),
        "bidirectional": pylstm.LSTM(3, 17, num_layers=2, bidirectional=True, dtype=dtype,
                                     random_state=2),
        "small": pylstm.LSTM(2, 5, dtype=dtype, random_state=3),
        # big enough for the kernel's own pool to split steps and products (pool2)
        "wide": pylstm.LSTM(32, 96, dtype=dtype, random_state=4),
    }


def make_jobs(models, rng):
    """Inference calls of every kind: (model name, method, args, kwargs)."""
    jobs = []
    for name, lstm in models.items():
        # batches on both sides of the SIMD step's fused-input threshold (4) and tile sizes
        for batch in (1, 3, 4, 7, 16):
            steps = int(rng.integers(1, 12))
            x = rng.standard_normal((batch, steps, lstm.input_size)).astype(lstm.dtype)
            h_shape = (lstm.num_layers * lstm.num_directions, batch, lstm.output_size)
            c_shape = h_shape[:2] + (lstm.hidden_size,)
            state = (rng.standard_normal(h_shape).astype(lstm.dtype),
                     rng.standard_normal(c_shape).astype(lstm.dtype))
            lengths = rng.integers(1, steps + 1, batch)
            jobs.append((name, "__call__", (x,), {}))
            jobs.append((name, "__call__", (x,), {"state": state, "lengths": lengths}))
            if not lstm.bidirectional:
                jobs.append((name, "step", (x[:, 0],), {}))
                jobs.append((name, "step", (x[:, 0], state), {}))
    return jobs


def flatten(result):
    """A call's arrays, in order, for bitwise comparison."""
    if isinstance(result, np.ndarray):
        return [result]
    return [array for item in result for array in flatten(item)]


def assert_same(actual, expected, what):
    actual, expected = flatten(actual), flatten(expected)
    assert len(actual) == len(expected)
    for got, wanted in zip(actual, expected):
        assert got.dtype == wanted.dtype and got.shape == wanted.shape, what
        if not np.array_equal(got, wanted):
            error = np.abs(got.astype(np.float64) - wanted).max()
            raise AssertionError(f"{what}: differs from the serial result (max {error:.3g})")


def snapshot(models):
    return {name: lstm.state_dict() for name, lstm in models.items()}


def assert_unchanged(models, before):
    for name, lstm in models.items():
        for param, value in lstm.state_dict().items():
            np.testing.assert_array_equal(value, before[name][param],
                                          f"inference changed {name}.{param}")


@pytest.fixture(params=[1, 2], ids=["pool1", "pool2"])
def kernel_threads(request, level):
    """pylstm's own worker threads per call (set_num_threads), at the levels that use them."""
    setter = getattr(pylstm, "set_num_threads", None)
    if request.param > 1 and (setter is None or level == "portable"):
        pytest.skip("no pylstm thread pool here (the portable path threads through BLAS)")
    if setter is None:
        yield 1
        return
    previous = pylstm.get_num_threads() if hasattr(pylstm, "get_num_threads") else 1
    setter(request.param)
    yield request.param
    setter(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_threads_sharing_a_model_get_the_serial_results(level, dtype, kernel_threads):
    rng = np.random.default_rng(6)
    models = make_models(dtype)
    jobs = make_jobs(models, rng)
    inputs = [[np.array(a, copy=True) for a in flatten(args)] for _, _, args, _ in jobs]
    # The serial results come from twins, so the shared models start cold: their
    # first calls, which build the weight cache, happen concurrently.
    twins = {name: twin(lstm) for name, lstm in models.items()}
    expected = [getattr(twins[name], method)(*args, **kwargs)
                for name, method, args, kwargs in jobs]
    before = snapshot(models)
    results: dict[tuple[int, int, int], object] = {}

    def worker(index):
        order = np.random.default_rng(index).permutation(len(jobs))
        for round_ in range(ROUNDS):
            for j in order:
                name, method, args, kwargs = jobs[j]
                result = getattr(models[name], method)(*args, **kwargs)
                assert_same(result, expected[j], f"thread {index}, job {j} ({name}.{method})")
                results[index, round_, j] = result

    run_threads(worker)
    assert len(results) == THREADS * ROUNDS * len(jobs)
    # No call handed out a buffer that a later call (in any thread) overwrote.
    for (index, round_, j), result in results.items():
        assert_same(result, expected[j], f"kept result of thread {index}, job {j}")
    assert_unchanged(models, before)
    for (_, _, args, _), copies in zip(jobs, inputs):
        for array, copy in zip(flatten(args), copies):
            np.testing.assert_array_equal(array, copy, "an input was modified")


def test_streaming_steps_in_threads_match_serial_streams(level):
    """Each thread streams its own sequence through one shared model, state carried across steps."""
    lstm = pylstm.LSTM(4, 32, num_layers=3, proj_size=9, random_state=4)
    rng = np.random.default_rng(7)
    streams = [rng.standard_normal((40, 1 + i % 6, 4)).astype(np.float32)
               for i in range(THREADS)]

    def stream(model, xs):
        state, outputs = None, []
        for x_t in xs:
            y, state = model.step(x_t, state)
            outputs.append(y)
        return outputs, state

    reference = twin(lstm)
    expected = [stream(reference, xs) for xs in streams]
    got: dict[int, object] = {}
    run_threads(lambda index: got.__setitem__(index, stream(lstm, streams[index])))
    for index in range(THREADS):
        assert_same(got[index], expected[index], f"stream {index}")


def test_first_calls_from_many_threads_build_the_cache_safely(level):
    """Fresh models, first touched by 8 threads at once, mixing __call__ and step."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    lengths = np.array([5, 1, 3, 5, 2, 4])
    for seed in range(12):
        lstm = pylstm.LSTM(3, 19, num_layers=2, proj_size=seed % 3, random_state=seed)
        reference = twin(lstm)
        expected_call = reference(x, lengths=lengths)
        expected_step = reference.step(x[:, 0])

        def worker(index):
            if index % 2:
                assert_same(lstm.step(x[:, 0]), expected_step, f"seed {seed} step")
            else:
                assert_same(lstm(x, lengths=lengths), expected_call, f"seed {seed} call")

        run_threads(worker)


def test_weights_written_between_calls_are_used(level):
    """The cache of kernel-ready weights never serves old weights after a write."""
    lstm = pylstm.LSTM(3, 8, num_layers=2, random_state=5)
    x = np.random.default_rng(9).standard_normal((4, 6, 3)).astype(np.float32)
    lstm(x), lstm.step(x[:, 0])                       # fill the cache
    new = {name: value * 0.5 for name, value in lstm.state_dict().items()}
    lstm.load_state_dict(new)
    fresh = pylstm.LSTM(3, 8, num_layers=2)
    fresh.load_state_dict(new)
    assert_same(lstm(x), fresh(x), "__call__ after load_state_dict")
    assert_same(lstm.step(x[:, 0]), fresh.step(x[:, 0]), "step after load_state_dict")
    for name, view in lstm.parameters().items():      # writes through live views
        view *= 2
        new[name] = new[name] * 2
    fresh.load_state_dict(new)
    assert_same(lstm(x), fresh(x), "__call__ after writing through parameters()")
    lstm.flat_parameters -= np.float32(0.01)           # the in-place update of the README
    fresh.load_state_dict({name: value - np.float32(0.01) for name, value in new.items()})
    assert_same(lstm.step(x[:, 0]), fresh.step(x[:, 0]), "step after flat_parameters -=")


def test_writes_through_a_view_of_a_parameter_view_are_used():
    lstm = pylstm.LSTM(2, 3, random_state=0)
    x = np.ones((1, 4, 2), np.float32)
    row = lstm.parameters()["weight_hh_l0"][0]   # the dict of tracked views dies here
    lstm(x)                                      # caches the weights
    row[:] = 5.0
    fresh = pylstm.LSTM(2, 3)
    fresh.load_state_dict(lstm.state_dict())
    assert_same(lstm(x), fresh(x), "__call__ after writing through a derived view")


# --------------------------------------------------------------------------
# The GIL is released for the whole computation
# --------------------------------------------------------------------------
def longest_pause_during(call):
    """(longest stall of a pure-Python loop while ``call`` runs in a thread, call's duration)."""
    done = threading.Event()
    timing = {}

    def worker():
        start = time.perf_counter()
        call()
        timing["duration"] = time.perf_counter() - start
        done.set()

    thread = threading.Thread(target=worker)
    last = time.perf_counter()
    longest = 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
        sum(range(50))  # a little pure-Python work that needs the GIL
    thread.join()
    return longest, timing["duration"]


def timed_call(method, size):
    """A call of ``method`` on a problem of ``size`` (sequence length, or batch for step)."""
    lstm = pylstm.LSTM(64, 128, num_layers=2, random_state=0)
    rng = np.random.default_rng(10)
    if method == "step":
        x = rng.standard_normal((size, 64)).astype(np.float32)
        state = lstm.initial_state(size)
        return lambda: lstm.step(x, state)
    x = rng.standard_normal((32, size, 64)).astype(np.float32)
    if method == "backward":
        grad = np.ones((32, size, 128), np.float32)
        caches = []

        def call():
            lstm.backward(caches.pop(), grad)
        # fresh caches made beforehand, outside the timed region
        return call, lambda: caches.append(lstm.forward_train(x)[2])
    return lambda: getattr(lstm, method)(x)


@pytest.mark.parametrize("method", ["__call__", "step", "forward_train", "backward"])
def test_compiled_calls_release_the_gil(level, method):
    from threadpoolctl import threadpool_limits

    # One BLAS thread, so the two Python threads are all that compete for the cores.
    with threadpool_limits(1):
        size = 2048 if method == "step" else 64
        for _ in range(4):  # grow the problem until one call takes about 0.15 s
            made = timed_call(method, size)
            call, prepare = made if isinstance(made, tuple) else (made, lambda: None)
            prepare(), prepare()
            call()  # warm up (fills the weight cache)
            start = time.perf_counter()
            call()
            duration = time.perf_counter() - start
            if duration >= 0.1:
                break
            size = int(size * min(8.0, 0.15 / max(duration, 1e-4)) + 1)
        prepare()
        longest, duration = longest_pause_during(call)
    assert duration > 0.05, f"the call took only {duration * 1e3:.1f} ms: too short to tell"
    # Holding the GIL through the kernel would stall the loop for the whole call.
    assert longest < 0.5 * duration, (
        f"the main thread stalled {longest * 1e3:.1f} ms during a {duration * 1e3:.1f} ms "
        f"{method}: the GIL is held")


# --------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------
def fitted(kind, seed, X, y, **params):
    estimators = pytest.importorskip("pylstm._estimators")
    cls = estimators.LSTMClassifier if kind == "classifier" else estimators.LSTMRegressor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(hidden_size=12, max_iter=4, random_state=seed, **params).fit(X, y)


def estimator_data(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((60, 7, 3))
    return X, X[:, :, 0].sum(axis=1) > 0, X[:, -1, :].sum(axis=1)


def test_threads_sharing_an_estimator_get_the_serial_predictions(level):
    X, labels, targets = estimator_data(0)
    classifier = fitted("classifier", 0, X, labels)
    regressor = fitted("regressor", 0, X, targets)
    batches = [X[i:i + 1 + i % 9] for i in range(0, 50, 5)]
    calls = [(model, method) for model, methods in ((classifier, ("predict", "predict_proba")),
                                                    (regressor, ("predict",)))
             for method in methods]
    expected = {(c, b): getattr(model, method)(batch) for c, (model, method) in enumerate(calls)
                for b, batch in enumerate(batches)}

    def worker(index):
        for _ in range(ROUNDS):
            for (c, b), wanted in expected.items():
                model, method = calls[c]
                got = getattr(model, method)(batches[b])
                np.testing.assert_array_equal(got, wanted, f"thread {index}: {method}")

    run_threads(worker)


def test_fit_while_another_thread_predicts_with_another_estimator(level):
    X, labels, targets = estimator_data(1)
    predictor = fitted("classifier", 1, X, labels)
    expected = predictor.predict_proba(X)
    # what fit gives when nothing else runs
    alone = fitted("regressor", 2, X, targets)
    stop = threading.Event()
    predictions = []

    def predict_until_stopped():
        while not stop.is_set():
            predictions.append(predictor.predict_proba(X))

    thread = threading.Thread(target=predict_until_stopped)
    thread.start()
    try:
        during = fitted("regressor", 2, X, targets)
    finally:
        stop.set()
        thread.join()
    assert predictions, "the predicting thread never ran"
    for got in predictions:
        np.testing.assert_array_equal(got, expected)
    for name, value in during.lstm_.state_dict().items():
        np.testing.assert_array_equal(value, alone.lstm_.state_dict()[name], name)
    np.testing.assert_array_equal(during.head_coef_, alone.head_coef_)
    np.testing.assert_array_equal(during.predict(X), alone.predict(X))
