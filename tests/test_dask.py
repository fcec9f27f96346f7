"""pylstm.dask: inference, out-of-core training and searches on a real two-process LocalCluster.

One cluster for the module (two worker processes, one thread each, loopback
only), shut down at the end. Everything but the import check skips when
dask[distributed] or scikit-learn is missing.

The workers are spawned processes that inherit this process's ``sys.path``
(multiprocessing's spawn copies it), so they import pylstm, and this module,
by the same names as here: ``CountingClassifier`` below is pickled by
reference and counts its own unpickling in each worker.
"""
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import pylstm

try:
    for _name in ("dask", "distributed", "sklearn"):
        importlib.import_module(_name)
except ImportError:
    HAVE_DASK = False
else:
    HAVE_DASK = True
needs_dask = pytest.mark.skipif(
    not HAVE_DASK, reason="needs dask[distributed] and scikit-learn: pip install 'pylstm[dask]'")

TESTS_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(pylstm.__file__).resolve().parents[1]   # the directory holding pylstm/

if HAVE_DASK:
    import dask
    import dask.array as da
    import dask.bag as db
    import joblib
    from distributed import Client, Future, LocalCluster
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    import pylstm.dask as pylstm_dask
    from pylstm import LSTMClassifier, LSTMRegressor

    _MODEL_LOADS = [0]   # CountingClassifiers unpickled in this process
    _FITS = [0]          # CountingClassifiers fitted in this process

    class CountingClassifier(LSTMClassifier):
        """An LSTMClassifier that counts, per process, how often it is unpickled and fitted."""

        def __setstate__(self, state):
            _MODEL_LOADS[0] += 1
            super().__setstate__(state)

        def fit(self, X, y, sample_weight=None):
            _FITS[0] += 1
            return super().fit(X, y, sample_weight=sample_weight)


def _model_loads():
    return _MODEL_LOADS[0]


def _reset_model_loads():
    _MODEL_LOADS[0] = 0


def _fits():
    return _FITS[0]


def _holds(key, dask_worker=None):
    """Whether this worker has ``key`` in memory (run through ``client.run``)."""
    return key in dask_worker.data


def _task_dependencies(task):
    """Keys a task of a graph depends on, futures' keys included."""
    dependencies = getattr(task, "dependencies", None)
    if dependencies is not None:          # dask >= 2024.12: Task objects
        return set(dependencies)
    found = set()                         # older: tuples holding the futures themselves

    def walk(node):
        if isinstance(node, Future):
            found.add(node.key)
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(task)
    return found


def _sequences(n, steps, features, seed):
    """Gaussian sequences labelled by the sign of the running sum of feature 0 at the end."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, steps, features)).astype(np.float32)
    return X, (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)


def _quiet_fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


# ---------------------------------------------------------------- import
def test_import_pylstm_does_not_import_dask():
    # a fresh interpreter: this one has imported dask already
    code = ("import sys, numpy as np, pylstm\n"
            "pylstm.LSTM(3, 4, random_state=0)(np.zeros((2, 5, 3), np.float32))\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
            "assert not loaded, loaded\n"
            "assert 'pylstm.dask' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data():
    X, y = _sequences(300, 12, 3, seed=0)
    return X, y


@pytest.fixture(scope="module")
def classifier(data):
    X, y = data
    return _quiet_fit(CountingClassifier(hidden_size=8, max_iter=3, random_state=0), X, y)


@pytest.fixture(scope="module")
def client():
    """Two worker processes with one thread each, on loopback; closed after the module."""
    # spawned workers copy sys.path: make sure it finds pylstm and this module
    # (pytest's default import mode has put this directory there already)
    added = [path for path in (str(TESTS_DIR), str(PACKAGE_ROOT)) if path not in sys.path]
    sys.path[:0] = added
    # dashboard_address=None still serves the scheduler's health routes on
    # port 8787: a free port instead, so that concurrent runs never collide
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
                Client(cluster) as client:
            yield client
    finally:
        for path in added:
            sys.path.remove(path)


# ---------------------------------------------------------------- inference
@needs_dask
def test_predict_without_a_client_uses_the_local_scheduler(classifier, data):
    # first in the module on purpose: the cluster fixture sets a default client
    try:
        from distributed import default_client
        default_client()
    except ValueError:
        pass
    else:
        pytest.skip("a default dask.distributed client exists in this process")
    X, _ = data
    out = pylstm_dask.predict_proba(classifier, da.from_array(X, chunks=(64, 12, 3)))
    model_keys = [key for key in dict(out.__dask_graph__())
                  if isinstance(key, str) and key.startswith("pylstm-model-")]
    assert len(model_keys) == 1            # the model is one key, read by every block
    np.testing.assert_array_equal(out.compute(scheduler="threads"),
                                  classifier.predict_proba(X))


@needs_dask
@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_predict_on_the_cluster_equals_predict_in_memory(client, classifier, data, method):
    X, _ = data
    # uneven chunks along samples; time split too, which predict must merge
    X_dask = da.from_array(X, chunks=((40, 100, 7, 153), (5, 7), (3,)))
    out = getattr(pylstm_dask, method)(classifier, X_dask, client=client)
    expected = getattr(classifier, method)(X)
    assert isinstance(out, da.Array)
    assert out.chunks[0] == X_dask.chunks[0]
    assert out.shape == expected.shape and out.dtype == expected.dtype
    result = out.compute()
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)   # identical, not just close


@needs_dask
def test_predict_univariate_series_multi_output_regressor(client, data):
    X, _ = data
    series = X[:, :, 0]                                          # (n, T): 2-D X
    targets = np.stack([series.sum(axis=1), series[:, -1]], axis=1)
    regressor = _quiet_fit(LSTMRegressor(hidden_size=6, max_iter=2, random_state=0),
                           series, targets)
    out = pylstm_dask.predict(regressor, da.from_array(series, chunks=(70, 12)))
    assert out.shape == (300, 2) and out.chunks == ((70, 70, 70, 70, 20), (2,))
    np.testing.assert_array_equal(out.compute(), regressor.predict(series))


@needs_dask
def test_predict_per_step_outputs(client, data):
    X, y = data
    per_step = np.broadcast_to(y[:, np.newaxis], X.shape[:2])     # (n, T) labels
    classifier = _quiet_fit(LSTMClassifier(hidden_size=6, output="sequence", max_iter=2,
                                           random_state=0), X, per_step)
    X_dask = da.from_array(X, chunks=(80, 12, 3))
    labels = pylstm_dask.predict(classifier, X_dask)
    proba = pylstm_dask.predict_proba(classifier, X_dask)
    assert labels.shape == (300, 12) and proba.shape == (300, 12, 2)
    np.testing.assert_array_equal(labels.compute(), classifier.predict(X))
    np.testing.assert_array_equal(proba.compute(), classifier.predict_proba(X))
    # ragged: one (T_i,) array of labels per sequence
    sequences = [x[:1 + i % 12] for i, x in enumerate(X)]
    result = pylstm_dask.predict(classifier, db.from_sequence(sequences, npartitions=4)).compute()
    expected = classifier.predict(sequences)
    assert [r.shape for r in result] == [(len(s),) for s in sequences]
    for got, want in zip(result, expected):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def replicas_kept(client):
    """The Active Memory Manager paused for one test.

    Its ReduceReplicas policy (on by default) drops copies of data that no
    waiting task needs, a scattered broadcast included (see the note on
    ``broadcast`` in ``Client.scatter``); ``test_model_copies_under_the_amm``
    covers that case.
    """
    client.amm.stop()
    try:
        yield
    finally:
        client.amm.start()


def _collection(X, kind):
    """X as 12 blocks of a dask array or 12 partitions of a bag, and the number of tasks."""
    if kind == "array":
        return da.from_array(X, chunks=(25, 12, 3)), 12
    return db.from_sequence(list(X), npartitions=12), 12


@needs_dask
@pytest.mark.parametrize("collection", ["array", "bag"])
def test_model_is_sent_to_each_worker_once(client, replicas_kept, classifier, data, collection):
    X, _ = data
    X_dask, n_tasks = _collection(X, collection)
    workers = client.scheduler_info()["workers"]
    client.run(_reset_model_loads)
    out = pylstm_dask.predict(classifier, X_dask)                # the default client
    # every task refers to the model by one key, which is not in the graph:
    # it lives on the workers, a copy on each
    graph = dict(out.__dask_graph__())
    tasks = [task for key, task in graph.items()
             if (key[0] if isinstance(key, tuple) else key) == out.name]
    assert len(tasks) == n_tasks
    model_keys = {dep for task in tasks for dep in _task_dependencies(task) if dep not in graph}
    assert len(model_keys) == 1
    [model_key] = model_keys
    assert all(client.run(_holds, model_key).values())
    assert client.run(_model_loads) == dict.fromkeys(workers, 1)

    result = out.compute()
    np.testing.assert_array_equal(np.asarray(result), classifier.predict(X))
    # 12 tasks ran, the model was unpickled once per worker, at the scatter
    assert client.run(_model_loads) == dict.fromkeys(workers, 1)

    # the counter can tell: a model passed by value travels with every task
    client.run(_reset_model_loads)
    if collection == "array":
        naive = da.map_blocks(lambda block, model: model.predict(block), X_dask, classifier,
                              drop_axis=[1, 2], dtype=np.int64, meta=np.empty(0, np.int64))
    else:
        naive = X_dask.map_partitions(lambda part, model: list(model.predict(part)), classifier)
    naive.compute()
    assert sum(client.run(_model_loads).values()) >= n_tasks


@needs_dask
def test_model_copies_under_the_amm(client, classifier, data):
    # The default setting: when the result is computed later than the AMM's
    # next cycle (2 s), the copies no task waits for yet have been dropped; a
    # worker then fetches the model once more for its tasks, never once per task.
    X, _ = data
    X_dask, n_tasks = _collection(X, "array")
    client.run(_reset_model_loads)
    out = pylstm_dask.predict(classifier, X_dask)
    client.amm.run_once()                     # as if compute() came a while later
    np.testing.assert_array_equal(out.compute(), classifier.predict(X))
    loads = client.run(_model_loads)
    assert all(count <= 2 for count in loads.values()), loads
    assert sum(loads.values()) <= 2 * len(loads) - 1 < n_tasks


@needs_dask
@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_bag_of_ragged_sequences(client, classifier, data, method):
    X, _ = data
    lengths = np.random.default_rng(1).integers(1, 13, size=X.shape[0])
    sequences = [x[:length] for x, length in zip(X, lengths)]
    bag = db.from_sequence(sequences, npartitions=5)
    result = getattr(pylstm_dask, method)(classifier, bag).compute()
    assert len(result) == len(sequences)
    np.testing.assert_array_equal(np.asarray(result), getattr(classifier, method)(sequences))


@needs_dask
def test_predict_rejects_bad_input(classifier, data):
    X, _ = data
    with pytest.raises(TypeError, match="dask.array.Array or a dask.bag.Bag"):
        pylstm_dask.predict(classifier, X)
    with pytest.raises(ValueError, match="got shape"):
        pylstm_dask.predict(classifier, da.zeros((4, 3, 2, 1)))
    with pytest.raises(NotFittedError):
        pylstm_dask.predict(LSTMClassifier(), da.from_array(X))
    with pytest.raises(TypeError, match="predict_proba"):
        pylstm_dask.predict_proba(LSTMRegressor(), da.from_array(X))


# ---------------------------------------------------------------- training
@needs_dask
def test_fit_streams_shuffled_chunks_and_matches_in_memory_quality(client):
    # X is generated block by block on the workers: it never exists whole anywhere
    n, steps, features, chunk = 2000, 20, 2, 500
    X_dask = da.random.default_rng(0).standard_normal((n, steps, features), chunks=(chunk, steps, features),
                                                       dtype=np.float32)
    y_dask = (X_dask[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    X_test, y_test = _sequences(1000, steps, features, seed=1)
    params = dict(hidden_size=16, learning_rate_init=1e-2, batch_size=50, random_state=0)
    epochs = 10

    streamed = LSTMClassifier(**params)
    seen = []   # (rows, first value) of each chunk partial_fit got
    partial_fit = streamed.partial_fit

    def spy(X_chunk, y_chunk, **kwargs):
        seen.append((X_chunk.shape[0], float(X_chunk[0, 0, 0])))
        return partial_fit(X_chunk, y_chunk, **kwargs)

    streamed.partial_fit = spy
    assert pylstm_dask.fit(streamed, X_dask, y_dask, epochs=epochs) is streamed

    first_values = [float(value) for value in X_dask[::chunk, 0, 0].compute()]
    n_chunks = len(first_values)
    assert len(seen) == epochs * n_chunks
    assert max(rows for rows, _ in seen) == chunk           # one chunk at a time
    orders = [[first_values.index(value) for _, value in seen[e * n_chunks:(e + 1) * n_chunks]]
              for e in range(epochs)]
    assert all(sorted(order) == list(range(n_chunks)) for order in orders)   # each chunk once
    assert len({tuple(order) for order in orders}) > 1                       # a new order per epoch
    assert streamed.n_iter_ == epochs and streamed.t_ == epochs * n
    assert list(streamed.classes_) == [0, 1]

    in_memory = _quiet_fit(LSTMClassifier(max_iter=epochs, **params), *dask.compute(X_dask, y_dask))
    streamed_accuracy = streamed.score(X_test, y_test)
    in_memory_accuracy = in_memory.score(X_test, y_test)
    assert in_memory_accuracy > 0.85, in_memory_accuracy          # the task is learnable
    assert streamed_accuracy > 0.85, streamed_accuracy            # chance is 0.5
    # within five points: across seeds the two differ by up to about three
    assert streamed_accuracy >= in_memory_accuracy - 0.05, (streamed_accuracy, in_memory_accuracy)


@needs_dask
def test_fit_is_reproducible_and_starts_over_unless_warm_start(client, data):
    X, y = data
    X_dask = da.from_array(X, chunks=(100, 12, 3))
    first = pylstm_dask.fit(LSTMRegressor(hidden_size=4, random_state=3), X_dask, y, epochs=2)
    again = LSTMRegressor(hidden_size=4, random_state=3)
    pylstm_dask.fit(again, X_dask, y.astype(np.float64), epochs=2)
    np.testing.assert_array_equal(again.predict(X), first.predict(X))
    t_after_two = again.t_
    pylstm_dask.fit(again, X_dask, y, epochs=2)                  # starts over: same result
    assert again.t_ == t_after_two
    np.testing.assert_array_equal(again.predict(X), first.predict(X))
    again.set_params(warm_start=True)
    pylstm_dask.fit(again, X_dask, y, epochs=1)                  # continues
    assert again.t_ == t_after_two + X.shape[0]
    assert not np.array_equal(again.predict(X), first.predict(X))


@needs_dask
def test_fit_epoch_by_epoch_with_warm_start_visits_chunks_in_new_orders(data):
    X, y = data
    X_dask = da.from_array(X, chunks=(30, 12, 3))                # 10 chunks
    estimator = LSTMClassifier(hidden_size=4, warm_start=True, random_state=0)
    first_rows = []
    partial_fit = estimator.partial_fit

    def spy(X_chunk, y_chunk, **kwargs):
        first_rows.append(int(np.flatnonzero((X == X_chunk[0]).all(axis=(1, 2)))[0]))
        return partial_fit(X_chunk, y_chunk, **kwargs)

    estimator.partial_fit = spy
    orders = []
    for _ in range(3):
        pylstm_dask.fit(estimator, X_dask, y, epochs=1, client=None)
        orders.append(tuple(first_rows[-10:]))
    assert all(sorted(order) == list(range(0, 300, 30)) for order in orders)
    assert len(set(orders)) == 3
    assert estimator.t_ == 3 * X.shape[0]


@needs_dask
def test_fit_and_predict_with_unknown_chunk_sizes(client, data):
    X, y = data
    X_dask = da.from_array(X, chunks=(100, 12, 3))
    y_dask = da.from_array(y.astype(np.float64), chunks=100)
    keep = da.from_array(np.arange(X.shape[0]) % 7 != 0, chunks=100)
    X_kept, y_kept = X_dask[keep], y_dask[keep]          # chunk sizes unknown (nan)
    assert np.isnan(X_kept.chunks[0][0])
    model = pylstm_dask.fit(LSTMRegressor(hidden_size=4, random_state=0), X_kept, y_kept,
                            epochs=1)
    assert model.t_ == np.count_nonzero(np.arange(X.shape[0]) % 7)
    np.testing.assert_array_equal(pylstm_dask.predict(model, X_kept).compute(),
                                  model.predict(X_kept.compute()))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        pylstm_dask.fit(LSTMRegressor(), X_kept, y, epochs=1)


@needs_dask
def test_fit_rejects_bad_input(data):
    X, y = data
    X_dask = da.from_array(X, chunks=(100, 12, 3))
    with pytest.raises(ValueError, match="early_stopping=False"):
        pylstm_dask.fit(LSTMClassifier(early_stopping=True), X_dask, y, epochs=1)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        pylstm_dask.fit(LSTMClassifier(), X_dask, y, epochs=0)
    with pytest.raises(TypeError, match="dask.array.Array"):
        pylstm_dask.fit(LSTMClassifier(), X, y, epochs=1)
    with pytest.raises(ValueError, match="one entry per sample"):
        pylstm_dask.fit(LSTMClassifier(), X_dask, y[:-1], epochs=1)


# ---------------------------------------------------------------- search
@needs_dask
@pytest.mark.parametrize("search_class", ["GridSearchCV", "RandomizedSearchCV"])
def test_search_runs_on_the_cluster_through_joblib(client, data, search_class):
    X, y = data
    estimator = CountingClassifier(max_iter=2, learning_rate_init=1e-2, random_state=0)
    grid = {"hidden_size": [4, 8], "batch_size": [50, 100]}
    if search_class == "GridSearchCV":
        n_fits = 4 * 2
        make = lambda: GridSearchCV(estimator, grid, cv=2)
    else:
        n_fits = 3 * 2
        make = lambda: RandomizedSearchCV(estimator, grid, n_iter=3, cv=2, random_state=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = make().fit(X, y)
        fits_before = sum(client.run(_fits).values())
        parent_fits_before = _fits()
        with joblib.parallel_config(backend="dask"):
            on_cluster = make().fit(X, y)
    # every (candidate, fold) fit ran in a worker; only the final refit ran here
    assert sum(client.run(_fits).values()) - fits_before == n_fits
    assert _fits() - parent_fits_before == 1
    # the same fits, wherever they ran: bit-identical scores
    np.testing.assert_array_equal(on_cluster.cv_results_["mean_test_score"],
                                  local.cv_results_["mean_test_score"])
    assert on_cluster.best_params_ == local.best_params_
