"""ONNX export: the exported graph, run in onnxruntime, against pylstm's own output."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pylstm

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from pylstm._onnx import to_onnx  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6

LAYER_CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, bias=False),
    # no projection in ONNX's LSTM op: these go through the Scan path
    dict(proj_size=3),
    dict(num_layers=2, bidirectional=True, proj_size=2, bias=False),
]


def run(model, **feeds):
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- layers
@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=repr)
def test_layer_matches_pylstm(rng, config):
    lstm = pylstm.LSTM(4, 6, random_state=0, **config)
    model = to_onnx(lstm)
    for batch, time in ((3, 7), (1, 2)):  # one graph, any batch and length
        x = rng.normal(size=(batch, time, 4)).astype(np.float32)
        out, h_n, c_n = run(model, input=x)
        expected_out, (expected_h, expected_c) = lstm(x)
        assert out.shape == expected_out.shape
        assert_close(out, expected_out)
        assert_close(h_n, expected_h)
        assert_close(c_n, expected_c)


@pytest.mark.parametrize("config", [dict(num_layers=2, bidirectional=True),
                                    dict(bidirectional=True, proj_size=2)], ids=repr)
def test_layer_with_lengths_matches_pylstm(rng, config):
    lstm = pylstm.LSTM(4, 5, random_state=1, **config)
    model = to_onnx(lstm, with_lengths=True)
    assert [value.name for value in model.graph.input] == ["input", "lengths"]
    x = rng.normal(size=(4, 6, 4)).astype(np.float32)
    lengths = np.array([6, 1, 4, 2], dtype=np.int64)
    out, h_n, c_n = run(model, input=x, lengths=lengths)
    expected_out, (expected_h, expected_c) = lstm(x, lengths=lengths)
    assert_close(out, expected_out)
    assert np.all(out[1, 1:] == 0)  # zero past a sequence's end, as pylstm
    assert_close(h_n, expected_h)
    assert_close(c_n, expected_c)


def test_layer_graph_signature():
    lstm = pylstm.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    model = to_onnx(lstm)
    assert [(v.name, dims(v)) for v in model.graph.input] == [("input", ["batch", "time", 4])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [
        ("output", ["batch", "time", 6]), ("h_n", [4, "batch", 3]), ("c_n", [4, "batch", 6])]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.producer_name == "pylstm"


def test_float64_layer_exports_as_float32(rng):
    lstm = pylstm.LSTM(3, 5, bidirectional=True, dtype=np.float64, random_state=0)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out, _, _ = run(to_onnx(lstm), input=x)
    assert out.dtype == np.float32
    assert_close(out, lstm(x)[0], rtol=1e-5, atol=1e-6)


def test_path_writes_the_returned_model(tmp_path):
    path = tmp_path / "lstm.onnx"
    model = to_onnx(pylstm.LSTM(3, 4), path)
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lstm.onnx"]


def test_refuses_other_objects():
    with pytest.raises(TypeError, match="pylstm.LSTM, LSTMClassifier or LSTMRegressor"):
        to_onnx(object())


def test_without_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r"pip install 'pylstm\[onnx\]'"):
        to_onnx(pylstm.LSTM(3, 4))


def test_import_pylstm_does_not_import_onnx(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(pylstm.__file__)))
    code = "import sys, pylstm; pylstm.LSTM(2, 3); assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": root})


# ----------------------------------------------------------------------------- estimators
def fit(estimator_class, rng, y, ndim=3, X=None, **params):
    pytest.importorskip("sklearn")
    if X is None:
        X = rng.normal(size=(30, 6, 3) if ndim == 3 else (30, 6)).astype(np.float32)
    with warnings.catch_warnings():  # ConvergenceWarning: a few epochs only
        warnings.simplefilter("ignore")
        model = getattr(pylstm, estimator_class)(hidden_size=5, max_iter=3, random_state=0,
                                                 **params).fit(X, y)
    return model, X


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True)], ids=repr)
def test_classifier_probabilities_and_labels_match(rng, labels, config):
    y = np.arange(30) % 3 if labels == "int" else np.array(["a", "bb", "c"])[np.arange(30) % 3]
    model, X = fit("LSTMClassifier", rng, y, **config)
    exported = to_onnx(model)
    assert [(v.name, dims(v)) for v in exported.graph.output] == [
        ("label", ["batch"]), ("probabilities", ["batch", 3])]
    label, probabilities = run(exported, input=X)
    assert_close(probabilities, model.predict_proba(X))
    assert label.tolist() == model.predict(X).tolist()


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_regressor_predictions_match(rng, n_outputs):
    y = rng.normal(size=(30, n_outputs)) if n_outputs > 1 else rng.normal(size=30)
    model, X = fit("LSTMRegressor", rng, y, bidirectional=True)
    predictions, = run(to_onnx(model), input=X)
    assert predictions.shape == model.predict(X).shape
    assert_close(predictions, model.predict(X))


def test_regressor_fitted_on_univariate_series_takes_one_feature(rng):
    model, X = fit("LSTMRegressor", rng, rng.normal(size=30), ndim=2)
    predictions, = run(to_onnx(model), input=X[:, :, np.newaxis])
    assert_close(predictions, model.predict(X))


def test_classifier_with_lengths_reads_each_sequence_up_to_its_end(rng):
    model, X = fit("LSTMClassifier", rng, np.arange(30) % 2, bidirectional=True)
    lengths = rng.integers(1, 7, size=30)
    _, probabilities = run(to_onnx(model, with_lengths=True), input=X, lengths=lengths)
    expected = np.concatenate([model.predict_proba(X[i:i + 1, :lengths[i]])
                               for i in range(len(X))])
    assert_close(probabilities, expected)


@pytest.mark.parametrize("estimator, n_outputs", [("LSTMClassifier", 3), ("LSTMClassifier", 2),
                                                  ("LSTMRegressor", 1), ("LSTMRegressor", 2)])
def test_per_step_estimators_match(rng, estimator, n_outputs):
    """output="sequence": one prediction per step, (batch, time, ...), as predict gives."""
    X = rng.normal(size=(30, 6, 3)).astype(np.float32)
    if estimator == "LSTMClassifier":
        y = (np.digitize(X[:, :, 0], [-0.5, 0.5]) % n_outputs)
    else:
        y = X[:, :, :n_outputs].cumsum(axis=1).squeeze()
    model, _ = fit(estimator, rng, y, X=X, output="sequence", bidirectional=True, num_layers=2)
    exported = to_onnx(model)
    axes = ["batch", "time"]
    outputs = run(exported, input=X)
    if estimator == "LSTMClassifier":
        assert [(v.name, dims(v)) for v in exported.graph.output] == [
            ("label", axes), ("probabilities", axes + [n_outputs])]
        label, probabilities = outputs
        assert_close(probabilities, model.predict_proba(X))
        assert label.tolist() == model.predict(X).tolist()
    else:
        predictions, = outputs
        assert predictions.shape == model.predict(X).shape == y.shape
        assert_close(predictions, model.predict(X))
    # lengths: every valid step is the prediction for that sequence alone
    lengths = rng.integers(1, 7, size=len(X))
    last = run(to_onnx(model, with_lengths=True), input=X, lengths=lengths)[-1]
    for i in range(len(X)):
        alone = (model.predict_proba if estimator == "LSTMClassifier" else model.predict)(
            X[i:i + 1, :lengths[i]])
        assert_close(last[i, :lengths[i]], alone[0])


def test_forecaster_is_refused_with_a_pointer_to_its_network(rng):
    pytest.importorskip("sklearn")
    series = np.sin(np.arange(60) / 3.0)
    forecaster = pylstm.LSTMForecaster(lookback=8, horizon=2, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forecaster.fit(series)
    with pytest.raises(NotImplementedError, match="regressor_"):
        to_onnx(forecaster)
    predictions, = run(to_onnx(forecaster.regressor_),
                       input=rng.normal(size=(4, 8, 1)).astype(np.float32))
    assert predictions.shape[0] == 4


def test_unfitted_estimator_raises_not_fitted():
    pytest.importorskip("sklearn")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        to_onnx(pylstm.LSTMRegressor())
