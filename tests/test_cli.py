"""``python -m pylstm``: info, predict and export-onnx.

Each command runs at least once as scripts run it, in a subprocess; the many
error cases call ``main()`` in-process (each subprocess pays pylstm's import).
"""
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pylstm
from pylstm.__main__ import main

PROGRAM = "python -m pylstm"


def cli(*args, cwd):
    """Run ``python -m pylstm ARGS`` on the pylstm under test; returns the CompletedProcess."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pylstm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "pylstm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def run_main(*args, capsys):
    """``main()`` in-process; returns (status, stdout, stderr)."""
    try:
        status = main([str(arg) for arg in args])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, stdout, stderr):
    assert status != 0
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROGRAM}: error: ")
    assert "Traceback" not in stderr


@pytest.fixture
def layer(tmp_path):
    lstm = pylstm.LSTM(3, 5, num_layers=2, bidirectional=True, random_state=0)
    lstm.save(tmp_path / "layer.npz")
    return lstm, tmp_path / "layer.npz"


@pytest.fixture
def classifier(tmp_path, rng):
    pytest.importorskip("sklearn")
    X = rng.normal(size=(24, 5, 3)).astype(np.float32)
    y = np.array(["no", "yes"])[np.arange(24) % 2]
    with warnings.catch_warnings():  # ConvergenceWarning: two epochs only
        warnings.simplefilter("ignore")
        model = pylstm.LSTMClassifier(hidden_size=4, max_iter=2, random_state=0).fit(X, y)
    pylstm.save(model, tmp_path / "clf.npz")
    np.save(tmp_path / "X.npy", X)
    return model, tmp_path / "clf.npz", X


@pytest.fixture
def forecaster(tmp_path, rng):
    """A forecaster with one exogenous feature, its file, and y and X of 40 + 3 steps."""
    pytest.importorskip("sklearn")
    y = np.cumsum(rng.normal(size=43))
    X = rng.normal(size=(43, 1))
    with warnings.catch_warnings():  # ConvergenceWarning: two epochs only
        warnings.simplefilter("ignore")
        model = pylstm.LSTMForecaster(6, 3, hidden_size=4, max_iter=2, random_state=0).fit(
            y[:40], X[:40])
    model.save(tmp_path / "forecaster.npz")
    return model, tmp_path / "forecaster.npz", y, X


# ----------------------------------------------------------------------------- info
def test_info_describes_a_layer(layer, tmp_path):
    result = cli("info", layer[1], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pylstm LSTM, model-file format 1" in result.stdout
    assert "hidden_size=5" in result.stdout and "bidirectional=True" in result.stdout
    assert "lstm/weight_hh_l1_reverse" in result.stdout
    n_parameters = sum(value.size for value in layer[0].state_dict().values())
    assert f"{n_parameters} parameters" in result.stdout
    result = cli("info", "--json", layer[1], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert metadata["class"] == "LSTM" and metadata["lstm"]["num_layers"] == 2


def test_info_describes_an_estimator(classifier, capsys):
    status, stdout, stderr = run_main("info", classifier[1], capsys=capsys)
    assert status == 0, stderr
    assert "pylstm LSTMClassifier" in stdout
    assert "classes_: ['no', 'yes']" in stdout
    assert "n_iter_: 2" in stdout


def test_info_describes_a_forecaster(forecaster, capsys):
    status, stdout, stderr = run_main("info", forecaster[1], capsys=capsys)
    assert status == 0, stderr
    assert "pylstm LSTMForecaster, model-file format 1" in stdout
    assert "forecaster: lookback=6, horizon=3, strategy='direct', relative=True" in stdout
    assert "fitted on y of shape (n_timesteps,), n_series_=1, n_exog_=1" in stdout
    assert "regressor_: LSTMRegressor" in stdout
    assert "head: (4 features) -> 3 outputs" in stdout    # 3 steps of 1 series
    assert "n_features_in_=3" in stdout                   # series, observed flag, feature
    assert re.search(r"regressor/lstm/weight_ih_l0 +\(16, 3\) +float32", stdout)
    assert re.search(r"attributes/X_mean_ +\(1,\) +float64", stdout)
    n_parameters = sum(value.size for value in forecaster[0].regressor_.lstm_.state_dict()
                       .values()) + 4 * 3 + 3
    assert f"{n_parameters} parameters in 12 arrays" in stdout


# ----------------------------------------------------------------------------- predict
def test_predict_with_a_layer_writes_its_output(layer, tmp_path, rng, capsys):
    lstm, path = layer
    x = rng.normal(size=(4, 6, 3))
    lengths = np.array([6, 2, 5, 1])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lengths.npy", lengths)
    result = cli("predict", path, "x.npy", "-o", "out.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), lstm(x)[0])
    status, _, stderr = run_main("predict", path, tmp_path / "x.npy", "--lengths",
                                 tmp_path / "lengths.npy", "-o", tmp_path / "out.npy",
                                 capsys=capsys)
    assert status == 0, stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), lstm(x, lengths=lengths)[0])


def test_predict_with_a_classifier_writes_labels_or_probabilities(classifier, tmp_path,
                                                                  capsys):
    model, path, X = classifier
    result = cli("predict", path, "X.npy", "-o", "labels.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    labels = np.load(tmp_path / "labels.npy", allow_pickle=False)
    assert labels.tolist() == model.predict(X).tolist()
    status, _, stderr = run_main("predict", path, tmp_path / "X.npy", "--proba", "-o",
                                 tmp_path / "proba.npy", capsys=capsys)
    assert status == 0, stderr
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), model.predict_proba(X))


def test_predict_with_a_forecaster_without_input_continues_its_training_series(tmp_path,
                                                                               rng, capsys):
    pytest.importorskip("sklearn")
    y = np.cumsum(rng.normal(size=40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pylstm.LSTMForecaster(6, 3, hidden_size=4, max_iter=2, random_state=0).fit(y)
    model.save(tmp_path / "plain.npz")
    result = cli("predict", "plain.npz", "-o", "forecast.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "forecast.npy"), model.predict())
    # INPUT: the series to continue
    np.save(tmp_path / "y.npy", y[:30])
    status, _, stderr = run_main("predict", tmp_path / "plain.npz", tmp_path / "y.npy",
                                 "--horizon", 2, "-o", tmp_path / "forecast.npy", capsys=capsys)
    assert status == 0, stderr
    forecast = np.load(tmp_path / "forecast.npy")
    assert forecast.shape == (2,)
    np.testing.assert_array_equal(forecast, model.predict(2, y=y[:30]))


def test_predict_with_a_forecaster_and_exogenous_features(forecaster, tmp_path, capsys):
    model, path, y, X = forecaster
    np.save(tmp_path / "X_future.npy", X[40:])
    status, _, stderr = run_main("predict", path, "--exog", tmp_path / "X_future.npy", "-o",
                                 tmp_path / "forecast.npy", capsys=capsys)
    assert status == 0, stderr
    np.testing.assert_array_equal(np.load(tmp_path / "forecast.npy"), model.predict(X=X[40:]))
    # with INPUT, --exog covers INPUT's steps and the horizon
    np.save(tmp_path / "y.npy", y[:35])
    np.save(tmp_path / "X.npy", X[:38])
    status, _, stderr = run_main("predict", path, tmp_path / "y.npy", "--exog",
                                 tmp_path / "X.npy", "-o", tmp_path / "forecast.npy",
                                 capsys=capsys)
    assert status == 0, stderr
    np.testing.assert_array_equal(np.load(tmp_path / "forecast.npy"),
                                  model.predict(X=X[:38], y=y[:35]))


def test_forecaster_and_input_errors_are_one_line(forecaster, layer, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, path, y, X = forecaster
    _, layer_path = layer
    np.save(tmp_path / "X_future.npy", X[40:])
    np.save(tmp_path / "y.npy", y[:40])
    cases = [
        (("predict", layer_path, "-o", "out.npy"), "INPUT.npy is required for a layer; only a "
                                                  "forecaster predicts without input"),
        (("predict", layer_path, "y.npy", "--horizon", 2, "-o", "out.npy"),
         "--horizon applies to forecasters; this model file holds a layer"),
        (("predict", layer_path, "y.npy", "--exog", "X_future.npy", "-o", "out.npy"),
         "--exog applies to forecasters"),
        (("predict", path, "-o", "out.npy"), "X is required"),
        (("predict", path, "--exog", "missing.npy", "-o", "out.npy"), "X 'missing.npy' is not "
                                                                      "a file"),
        (("predict", path, "--exog", "X_future.npy", "--horizon", 4, "-o", "out.npy"),
         "horizon=4 exceeds the horizon=3"),
        (("predict", path, "--exog", "X_future.npy", "--horizon", "two", "-o", "out.npy"),
         "argument --horizon: invalid int value"),
        (("predict", path, "y.npy", "--exog", "X_future.npy", "-o", "out.npy"),
         r"X has 3 time steps, expected 43 \(len\(y\) \+ (the trained )?horizon\)"),
        (("predict", path, "--proba", "-o", "out.npy"),
         "--proba applies to classifiers; this model file holds a LSTMForecaster"),
        (("predict", path, "--lengths", "y.npy", "-o", "out.npy"), "--lengths applies to "
                                                                   "layers"),
        (("export-onnx", path, "out.onnx"), "does not export an LSTMForecaster"),
    ]
    for args, message in cases:
        status, stdout, stderr = run_main(*args, capsys=capsys)
        assert_one_line_error(status, stdout, stderr)
        assert re.search(message, stderr), (args, stderr)
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.onnx").exists()


# ----------------------------------------------------------------------------- export-onnx
def test_export_onnx(classifier, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, path, X = classifier
    result = cli("export-onnx", path, "clf.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(onnx.load(str(tmp_path / "clf.onnx")).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"input": X})
    np.testing.assert_allclose(probabilities, model.predict_proba(X), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- errors
def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    for args in [("info", "notes.txt"), ()]:
        result = cli(*args, cwd=tmp_path)
        assert_one_line_error(result.returncode, result.stdout, result.stderr)
    assert "not a pylstm model file" in result.stderr or "required" in result.stderr


def test_errors_are_one_line_with_a_non_zero_status(layer, tmp_path, rng, capsys,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, path = layer
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 4, 3)))
    np.save(tmp_path / "wrong.npy", rng.normal(size=(2, 4, 7)))
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    (tmp_path / "notes.txt").write_text("not a model\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:300])
    cases = [
        ((), "required: COMMAND"),
        (("frobnicate", path), "invalid choice"),
        (("info",), "required: MODEL"),
        (("info", "missing.npz"), "No such file"),
        (("info", "notes.txt"), "not a pylstm model file"),
        (("info", truncated), "truncated"),
        (("info", "x.npy"), "not a pylstm model file"),
        (("predict", path, "x.npy"), "required: -o"),
        (("predict", path, "wrong.npy", "-o", "out.npy"), "7 features.*input_size=3"),
        (("predict", path, "notes.txt", "-o", "out.npy"), "not a readable .npy"),
        (("predict", path, "objects.npy", "-o", "out.npy"), "not a readable .npy"),
        (("predict", path, "x.npy", "--proba", "-o", "out.npy"), "--proba applies to class"),
        (("predict", path, "x.npy", "-o", tmp_path / "no" / "out.npy"), "cannot write"),
        (("export-onnx", "notes.txt", "out.onnx"), "not a pylstm model file"),
    ]
    for args, message in cases:
        status, stdout, stderr = run_main(*args, capsys=capsys)
        assert_one_line_error(status, stdout, stderr)
        assert re.search(message, stderr), (args, stderr)
    assert sorted(os.listdir(tmp_path)) == ["layer.npz", "notes.txt", "objects.npy",
                                            "truncated.npz", "wrong.npy", "x.npy"]


def test_version(tmp_path):
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"pylstm {pylstm.__version__}"


def test_help_lists_the_commands(capsys):
    status, stdout, _ = run_main("--help", capsys=capsys)
    assert status == 0
    assert all(command in stdout for command in ("info", "predict", "export-onnx"))
