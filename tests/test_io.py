"""Model files: save/load round trips, refusals of bad files, atomic writes, pickle."""
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

import pylstm
from pylstm import _io

LAYER_CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, proj_size=2, bias=False, dropout=0.25),
    dict(bidirectional=True, proj_size=3, dtype=np.float64),
]


def make_layer(input_size=3, hidden_size=5, random_state=0, **config):
    return pylstm.LSTM(input_size, hidden_size, random_state=random_state, **config)


@pytest.fixture
def layer_file(tmp_path):
    path = tmp_path / "layer.npz"
    make_layer(num_layers=2, bidirectional=True).save(path)
    return path


def read_members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_members(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def rewrite(path, edit_metadata=None, edit_members=None):
    """Rewrite a model file with its metadata and/or members changed (forged files)."""
    members = read_members(path)
    metadata = json.loads(members.pop("pylstm.json"))
    if edit_metadata:
        edit_metadata(metadata)
    if edit_members:
        edit_members(members)
    write_members(path, {"pylstm.json": json.dumps(metadata).encode(), **members})


def npy_bytes(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def leftovers(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------- layers
@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=repr)
def test_layer_round_trip_is_exact(tmp_path, rng, config):
    lstm = make_layer(**config)
    path = tmp_path / "model.npz"
    lstm.save(path)
    loaded = pylstm.load(path)
    assert type(loaded) is pylstm.LSTM
    assert repr(loaded) == repr(lstm)
    for name in ("input_size", "hidden_size", "num_layers", "bias", "bidirectional",
                 "proj_size", "dropout", "dtype"):
        assert getattr(loaded, name) == getattr(lstm, name)
    expected = lstm.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, value in loaded.state_dict().items():
        assert value.dtype == expected[name].dtype
        np.testing.assert_array_equal(value, expected[name])
    x = rng.normal(size=(4, 6, 3))
    lengths = np.array([6, 1, 3, 5])
    out, (h_n, c_n) = lstm(x, lengths=lengths)
    out2, (h_n2, c_n2) = loaded(x, lengths=lengths)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(h_n2, h_n)
    np.testing.assert_array_equal(c_n2, c_n)


def test_save_and_load_accept_str_paths_and_write_exactly_that_name(tmp_path):
    path = str(tmp_path / "weights.model")  # no extension is added
    pylstm.save(make_layer(), path)
    assert os.listdir(tmp_path) == ["weights.model"]
    assert isinstance(pylstm.load(path), pylstm.LSTM)


def test_file_is_an_npz_with_metadata_first(layer_file):
    with zipfile.ZipFile(layer_file) as archive:
        assert archive.namelist()[0] == "pylstm.json"
        metadata = json.loads(archive.read("pylstm.json"))
    assert metadata["format"] == "pylstm-model"
    assert metadata["format_version"] == _io.FORMAT_VERSION
    assert metadata["pylstm_version"] == pylstm.__version__
    assert metadata["class"] == "LSTM"
    assert metadata["lstm"]["hidden_size"] == 5 and metadata["lstm"]["dtype"] == "float32"
    assert metadata["arrays"]["lstm/weight_hh_l1_reverse.npy"] == {"shape": [20, 5],
                                                                  "dtype": "<f4"}
    # plain NumPy reads the arrays too, without pickle
    with np.load(layer_file, allow_pickle=False) as npz:
        assert npz["lstm/weight_ih_l1"].shape == (20, 10)


def test_same_model_gives_same_bytes(tmp_path):
    lstm = make_layer(num_layers=2)
    lstm.save(tmp_path / "a.npz")
    lstm.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_save_replaces_an_existing_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.npz"
    make_layer(hidden_size=4).save(path)
    make_layer(hidden_size=6).save(path)
    assert pylstm.load(path).hidden_size == 6
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_a_crash_mid_save_leaves_no_half_written_model(tmp_path, monkeypatch, existing):
    path = tmp_path / "model.npz"
    if existing:
        make_layer(hidden_size=4).save(path)
    before = path.read_bytes() if existing else None
    written = []
    real_write_array = np.lib.format.write_array

    def write_then_crash(stream, array, **kwargs):
        if written:
            raise OSError("disk full (simulated)")
        written.append(array)
        real_write_array(stream, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_crash)
    with pytest.raises(OSError, match="simulated"):
        make_layer(hidden_size=6, num_layers=2).save(path)
    assert written  # the crash happened in the middle of the file
    assert leftovers(tmp_path) == []
    if existing:
        assert path.read_bytes() == before
    else:
        assert not path.exists()


def test_save_into_a_missing_directory_names_the_target(tmp_path):
    target = tmp_path / "missing" / "model.npz"
    with pytest.raises(FileNotFoundError, match="model.npz"):
        make_layer().save(target)


def test_save_refuses_other_objects(tmp_path):
    with pytest.raises(TypeError, match="pylstm.LSTM, LSTMClassifier, LSTMRegressor or "
                                        "LSTMForecaster"):
        pylstm.save({"weight_ih_l0": np.zeros(3)}, tmp_path / "x.npz")

    class MyLSTM(pylstm.LSTM):
        pass

    with pytest.raises(TypeError, match="MyLSTM"):
        pylstm.save(MyLSTM(3, 4), tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_load_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        pylstm.load(tmp_path / "nothing.npz")


# ----------------------------------------------------------------------------- refusals
def test_refuses_a_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hidden_size = 5\n")
    with pytest.raises(ValueError, match="not a pylstm model file"):
        pylstm.load(path)


def test_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a pylstm model file"):
        pylstm.load(path)


def test_refuses_a_random_npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, weight_ih_l0=np.zeros((20, 3)), x=np.arange(4))
    with pytest.raises(ValueError, match="not a pylstm model file.*without pylstm.json"):
        pylstm.load(path)


def test_refuses_a_plain_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not a pylstm model file"):
        pylstm.load(path)


def test_refuses_a_torch_file(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(torch.nn.LSTM(3, 5, batch_first=True).state_dict(), path)
    with pytest.raises(ValueError, match="not a pylstm model file"):
        pylstm.load(path)


def test_refuses_a_zip_whose_json_is_not_ours(tmp_path):
    path = tmp_path / "other.zip"
    write_members(path, {"pylstm.json": b'{"hello": 1}'})
    with pytest.raises(ValueError, match="not a pylstm model file"):
        pylstm.load(path)
    write_members(path, {"pylstm.json": b"{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        pylstm.load(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1, -22])
def test_refuses_a_truncated_file(layer_file, keep):
    data = layer_file.read_bytes()
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    layer_file.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated"):
        pylstm.load(layer_file)


def test_refuses_a_corrupted_weight(layer_file):
    data = bytearray(layer_file.read_bytes())
    with zipfile.ZipFile(layer_file) as archive:
        info = archive.getinfo("lstm/weight_hh_l1.npy")
    # flip a byte in the member's data, past its local header and .npy header
    position = info.header_offset + 30 + len(info.filename) + 200
    data[position] ^= 0xFF
    layer_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        pylstm.load(layer_file)


def test_refuses_a_newer_format_version(layer_file):
    rewrite(layer_file, lambda meta: meta.update(format_version=_io.FORMAT_VERSION + 1,
                                                 pylstm_version="9.0"))
    with pytest.raises(ValueError, match=r"pylstm 9\.0 in model-file format 2.*upgrade pylstm"):
        pylstm.load(layer_file)


def test_refuses_an_object_array_without_unpickling(layer_file, monkeypatch):
    evil = np.array([{"a": 1}, None], dtype=object)
    member = "lstm/weight_ih_l0.npy"
    rewrite(layer_file, edit_members=lambda members: members.update(
        {member: npy_bytes(evil, allow_pickle=True)}))
    monkeypatch.setattr(pickle, "loads", pytest.fail)  # any unpickling fails the test
    with pytest.raises(ValueError, match="object array"):
        pylstm.load(layer_file)
    # and when the metadata itself declares one
    rewrite(layer_file, lambda meta: meta["arrays"][member].update(dtype="|O"))
    with pytest.raises(ValueError, match="object array"):
        pylstm.load(layer_file)


def test_refuses_a_missing_array(layer_file):
    rewrite(layer_file, edit_members=lambda members: members.pop("lstm/bias_hh_l1.npy"))
    with pytest.raises(ValueError, match=r"missing arrays \['lstm/bias_hh_l1.npy'\]"):
        pylstm.load(layer_file)


def test_refuses_an_unlisted_member(layer_file):
    rewrite(layer_file, edit_members=lambda members: members.update(
        {"extra.npy": npy_bytes(np.zeros(2))}))
    with pytest.raises(ValueError, match="does not list.*extra.npy"):
        pylstm.load(layer_file)


def test_refuses_an_array_that_disagrees_with_the_metadata(layer_file):
    member = "lstm/weight_hh_l0.npy"
    rewrite(layer_file, edit_members=lambda members: members.update(
        {member: npy_bytes(np.zeros((20, 4), np.float32))}))
    with pytest.raises(ValueError, match=r"weight_hh_l0.npy has shape \(20, 4\)"):
        pylstm.load(layer_file)
    rewrite(layer_file, edit_members=lambda members: members.update(
        {member: npy_bytes(np.zeros((20, 5), np.float64))}))
    with pytest.raises(ValueError, match="weight_hh_l0.npy has shape.*float64"):
        pylstm.load(layer_file)


def test_refuses_metadata_that_disagrees_with_itself(layer_file):
    # arrays consistent with their table entries, but not with the hyperparameters
    rewrite(layer_file, lambda meta: meta["lstm"].update(hidden_size=6))
    with pytest.raises(ValueError, match="must have shape"):
        pylstm.load(layer_file)


def test_refuses_a_layer_without_its_arrays_listed(layer_file):
    def drop(meta):
        del meta["arrays"]["lstm/bias_hh_l1.npy"]

    rewrite(layer_file, drop, lambda members: members.pop("lstm/bias_hh_l1.npy"))
    with pytest.raises(ValueError, match=r"do not match its hyperparameters: missing "
                                         r"\['lstm/bias_hh_l1.npy'\]"):
        pylstm.load(layer_file)


def test_refuses_absurd_hyperparameters_before_allocating(layer_file):
    rewrite(layer_file, lambda meta: meta["lstm"].update(num_layers=10**12))
    with pytest.raises(ValueError, match="num_layers"):
        pylstm.load(layer_file)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_refuses_non_finite_weights(layer_file, value):
    member = "lstm/bias_ih_l0.npy"
    bad = np.zeros(20, np.float32)
    bad[3] = value
    rewrite(layer_file, edit_members=lambda members: members.update({member: npy_bytes(bad)}))
    with pytest.raises(ValueError, match="NaN or infinity"):
        pylstm.load(layer_file)


# ----------------------------------------------------------------------------- pickle
def test_pickle_of_a_layer_keeps_working(rng):
    lstm = make_layer(num_layers=2, bidirectional=True)
    clone = pickle.loads(pickle.dumps(lstm))
    x = rng.normal(size=(2, 4, 3))
    np.testing.assert_array_equal(clone(x)[0], lstm(x)[0])


# ----------------------------------------------------------------------------- estimators
def fit_small(estimator_class, rng, y=None, ndim=3, **params):
    pytest.importorskip("sklearn")
    X = rng.normal(size=(24, 5, 3) if ndim == 3 else (24, 5)).astype(np.float32)
    if y is None:
        y = np.arange(24) % 3
    params = {"hidden_size": 4, "max_iter": 2, "random_state": 0, **params}
    with warnings.catch_warnings():  # ConvergenceWarning: two epochs only
        warnings.simplefilter("ignore")
        model = getattr(pylstm, estimator_class)(**params).fit(X, y)
    return model, X


def assert_same_estimator(loaded, model, X):
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params() or \
        repr(loaded.get_params()) == repr(model.get_params())
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
        assert loaded.classes_.dtype == model.classes_.dtype
    np.testing.assert_array_equal(loaded.head_coef_, model.head_coef_)
    np.testing.assert_array_equal(loaded.head_intercept_, model.head_intercept_)
    for name in ("n_features_in_", "n_iter_", "t_", "loss_", "loss_curve_", "best_loss_",
                 "validation_scores_", "best_validation_score_"):
        assert getattr(loaded, name) == getattr(model, name), name


@pytest.mark.parametrize("labels", ["int", "str", "bool"])
def test_classifier_round_trip_has_identical_predictions(tmp_path, rng, labels):
    y = {"int": np.arange(24) % 3 + 10,
         "str": np.array(["cat", "dog", "emu"])[np.arange(24) % 3],
         "bool": np.arange(24) % 2 == 0}[labels]
    model, X = fit_small("LSTMClassifier", rng, y, num_layers=2, bidirectional=True)
    pylstm.save(model, tmp_path / "clf.npz")
    assert_same_estimator(pylstm.load(tmp_path / "clf.npz"), model, X)


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_regressor_round_trip_has_identical_predictions(tmp_path, rng, n_outputs):
    y = rng.normal(size=(24, n_outputs)) if n_outputs > 1 else rng.normal(size=24)
    model, X = fit_small("LSTMRegressor", rng, y, dtype="float64", early_stopping=True,
                         validation_fraction=0.25)
    pylstm.save(model, tmp_path / "reg.npz")
    loaded = pylstm.load(tmp_path / "reg.npz")
    assert_same_estimator(loaded, model, X)
    assert loaded.n_outputs_ == n_outputs and loaded.lstm_.dtype == np.float64


def test_estimator_fitted_on_univariate_series_keeps_its_input_convention(tmp_path, rng):
    model, X = fit_small("LSTMRegressor", rng, rng.normal(size=24), ndim=2)
    pylstm.save(model, tmp_path / "reg.npz")
    loaded = pylstm.load(tmp_path / "reg.npz")
    assert_same_estimator(loaded, model, X)
    with pytest.raises(ValueError) as expected:
        model.predict(X[:, :4])
    with pytest.raises(ValueError) as got:
        loaded.predict(X[:, :4])
    assert str(got.value) == str(expected.value)


def test_estimator_parameters_that_json_lacks_round_trip(tmp_path, rng):
    model, X = fit_small("LSTMClassifier", rng, random_state=np.random.RandomState(3),
                         dtype=np.float64)
    pylstm.save(model, tmp_path / "clf.npz")
    loaded = pylstm.load(tmp_path / "clf.npz")
    assert loaded.dtype is np.float64
    state, loaded_state = (est.random_state.get_state(legacy=False) for est in (model, loaded))
    np.testing.assert_array_equal(loaded_state["state"]["key"], state["state"]["key"])
    assert loaded_state["state"]["pos"] == state["state"]["pos"]
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_object_string_arrays_come_back_as_object_arrays(tmp_path, rng):
    model, X = fit_small("LSTMRegressor", rng, rng.normal(size=24), ndim=2)
    # what scikit-learn stores after fitting on a DataFrame
    model.feature_names_in_ = np.array([f"t{k}" for k in range(5)], dtype=object)
    pylstm.save(model, tmp_path / "reg.npz")
    loaded = pylstm.load(tmp_path / "reg.npz")
    assert loaded.feature_names_in_.dtype == object
    assert loaded.feature_names_in_.tolist() == model.feature_names_in_.tolist()


def test_saving_an_unfitted_estimator_raises_not_fitted(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        pylstm.save(pylstm.LSTMClassifier(), tmp_path / "clf.npz")
    assert not (tmp_path / "clf.npz").exists()


def test_saving_an_attribute_a_file_cannot_hold_refuses_clearly(tmp_path, rng):
    model, _ = fit_small("LSTMClassifier", rng)
    model.callback_ = print
    with pytest.raises(TypeError, match="fitted attribute callback_"):
        pylstm.save(model, tmp_path / "clf.npz")
    assert os.listdir(tmp_path) == []


def test_refuses_a_forged_estimator_attribute(tmp_path, rng):
    model, _ = fit_small("LSTMClassifier", rng)
    path = tmp_path / "clf.npz"
    for name in ("__class__", "_head", "head_coef_", "lstm_", "fit", "Classes_"):
        pylstm.save(model, path)
        rewrite(path, lambda meta: meta["attributes"].update({name: 1}))
        with pytest.raises(ValueError, match="not a fitted attribute"):
            pylstm.load(path)


def test_refuses_classes_that_do_not_match_the_head(tmp_path, rng):
    model, _ = fit_small("LSTMClassifier", rng)
    path = tmp_path / "clf.npz"
    pylstm.save(model, path)
    rewrite(path, lambda meta: meta["arrays"]["attributes/classes_.npy"].update(shape=[2]),
            lambda members: members.update(
                {"attributes/classes_.npy": npy_bytes(np.array([0, 1]))}))
    with pytest.raises(ValueError, match="classes_ of shape"):
        pylstm.load(path)


def test_refuses_an_estimator_parameter_this_version_lacks(tmp_path, rng):
    model, _ = fit_small("LSTMClassifier", rng)
    path = tmp_path / "clf.npz"
    pylstm.save(model, path)
    rewrite(path, lambda meta: meta["params"].update(from_the_future=1))
    with pytest.raises(ValueError, match="from_the_future"):
        pylstm.load(path)


def test_loaded_estimator_can_be_refitted(tmp_path, rng):
    model, X = fit_small("LSTMClassifier", rng)
    pylstm.save(model, tmp_path / "clf.npz")
    loaded = pylstm.load(tmp_path / "clf.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.fit(X, np.arange(24) % 3)
        model.fit(X, np.arange(24) % 3)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_estimator_save_method(tmp_path, rng):
    model, X = fit_small("LSTMClassifier", rng)
    if not hasattr(model, "save"):
        pytest.skip("LSTMClassifier.save is not there yet")
    model.save(tmp_path / "clf.npz")
    assert_same_estimator(pylstm.load(tmp_path / "clf.npz"), model, X)


def test_pickle_and_joblib_of_estimators_keep_working(tmp_path, rng):
    joblib = pytest.importorskip("joblib")
    model, X = fit_small("LSTMClassifier", rng)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(X),
                                  model.predict_proba(X))
    joblib.dump(model, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X),
                                  model.predict_proba(X))


def test_loaded_estimator_can_keep_training(tmp_path):
    """A model file holds no optimizer state; partial_fit / warm_start start it afresh."""
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from pylstm import LSTMClassifier
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6, 2)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    clf = LSTMClassifier(hidden_size=8, max_iter=3, random_state=0).fit(X, y)
    clf.save(tmp_path / "clf.npz")
    loaded = pylstm.load(tmp_path / "clf.npz")
    loaded.partial_fit(X, y)
    assert loaded.n_iter_ >= 1 and np.all(np.isfinite(loaded.predict_proba(X)))
    loaded.set_params(warm_start=True).fit(X, y)
    assert np.all(np.isfinite(loaded.predict_proba(X)))


# ----------------------------------------------------------------------------- forecasters
def fit_forecaster(rng, n_series=1, n_exog=0, steps=40, **params):
    pytest.importorskip("sklearn")
    y = np.cumsum(rng.normal(size=(steps, n_series)), axis=0)
    y = y[:, 0] if n_series == 1 else y
    X = None if n_exog == 0 else rng.normal(size=(steps + 20, n_exog))
    params = {"lookback": 6, "horizon": 3, "hidden_size": 4, "max_iter": 2, "random_state": 0,
              **params}
    with warnings.catch_warnings():  # ConvergenceWarning: two epochs only
        warnings.simplefilter("ignore")
        model = pylstm.LSTMForecaster(**params).fit(y, None if X is None else X[:steps])
    return model, y, X


FORECASTER_CASES = [
    dict(),
    dict(strategy="recursive", horizon=1, relative=False),
    dict(n_series=2, n_exog=3),
    dict(n_series=2, n_exog=1, strategy="recursive", horizon=2, dtype="float64",
         num_layers=2),
]


@pytest.mark.parametrize("case", FORECASTER_CASES, ids=repr)
def test_forecaster_round_trip_has_identical_forecasts(tmp_path, rng, case):
    case = dict(case)
    model, y, X = fit_forecaster(rng, case.pop("n_series", 1), case.pop("n_exog", 0), **case)
    model.save(tmp_path / "forecaster.npz")
    loaded = pylstm.load(tmp_path / "forecaster.npz")
    assert type(loaded) is pylstm.LSTMForecaster
    assert loaded.get_params() == model.get_params()
    steps, horizon = len(y), 4 if model.strategy == "recursive" else model.horizon
    # from the end of training, from a later series, and for a shorter horizon
    calls = [dict(), dict(horizon=horizon, y=y[:steps - 3]), dict(horizon=1)]
    for call in calls:
        if X is not None:  # a direct model reads X over its whole trained horizon
            future = model.horizon if model.strategy == "direct" else call.get("horizon",
                                                                              model.horizon)
            end = (0 if "y" not in call else steps - 3) + future
            call["X"] = X[steps:steps + end] if "y" not in call else X[:end]
        forecast = model.predict(**call)
        np.testing.assert_array_equal(loaded.predict(**call), forecast)
        assert loaded.predict(**call).shape == forecast.shape
    for name in ("n_series_", "n_exog_", "y_mean_", "y_scale_", "X_mean_", "X_scale_",
                 "last_window_", "last_X_window_"):
        value, expected = getattr(loaded, name), getattr(model, name)
        if expected is None:
            assert value is None, name
        else:
            assert type(value) is type(expected) and np.shape(value) == np.shape(expected)
            np.testing.assert_array_equal(value, expected)
            assert np.asarray(value).dtype == np.asarray(expected).dtype, name
    assert_same_estimator(loaded.regressor_, model.regressor_,
                          rng.normal(size=(3, 6 + (3 if X is None else 0),
                                           model.regressor_.n_features_in_)))
    assert loaded._y_ndim == model._y_ndim


def test_forecaster_file_layout(tmp_path, rng):
    model, _, _ = fit_forecaster(rng, n_exog=2)
    pylstm.save(model, tmp_path / "forecaster.npz")
    members = read_members(tmp_path / "forecaster.npz")
    metadata = json.loads(members.pop("pylstm.json"))
    assert metadata["class"] == "LSTMForecaster" and metadata["format_version"] == 1
    assert metadata["y_ndim"] == 1 and metadata["params"]["lookback"] == 6
    assert metadata["attributes"] == {"n_series_": 1, "n_exog_": 2}
    assert "lstm" not in metadata and metadata["regressor"]["class"] == "LSTMRegressor"
    assert metadata["regressor"]["lstm"]["input_size"] == 1 + 1 + 2
    assert sorted(name for name in members if name.startswith("attributes/")) == [
        f"attributes/{name}.npy" for name in sorted(
            ["X_mean_", "X_scale_", "last_X_window_", "last_window_", "y_mean_", "y_scale_"])]
    assert {name.split("/")[1] for name in members if not name.startswith("attributes/")} == \
        {"lstm", "head"}
    assert all(name.startswith(("attributes/", "regressor/")) for name in members)
    # the same forecaster gives the same bytes
    pylstm.save(model, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "forecaster.npz").read_bytes()


def test_saving_an_unfitted_forecaster_raises_not_fitted(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        pylstm.LSTMForecaster(6).save(tmp_path / "forecaster.npz")
    assert not (tmp_path / "forecaster.npz").exists()


def test_saving_refuses_a_fitted_attribute_name_a_file_cannot_hold(tmp_path, rng):
    # such an attribute must not be dropped silently
    model, _, _ = fit_forecaster(rng)
    model.Level_ = np.zeros(2)
    with pytest.raises(TypeError, match="fitted attribute Level_"):
        model.save(tmp_path / "forecaster.npz")
    assert os.listdir(tmp_path) == []


def _set(section, key, value):
    def edit(meta):
        target = meta
        for part in section:
            target = target[part]
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value
    return edit


_DELETE = object()


def _replace_array(member, array):
    def edit_metadata(meta):
        meta["arrays"][member] = {"shape": list(array.shape), "dtype": array.dtype.str}

    def edit_members(members):
        members[member] = npy_bytes(array)
    return edit_metadata, edit_members


FORGED_FORECASTERS = {
    "a regressor weight missing": (
        None, lambda members: members.pop("regressor/lstm/bias_hh_l0.npy"),
        r"missing arrays \['regressor/lstm/bias_hh_l0.npy'\]"),
    "a scaling array of the wrong shape": (
        *_replace_array("attributes/y_mean_.npy", np.zeros(2)),
        r"y_mean_ must be a float64 array of shape \(1,\).*got an array of shape \(2,\)"),
    "a window of the wrong dtype": (
        *_replace_array("attributes/last_window_.npy", np.zeros((6, 1), np.float32)),
        r"last_window_ must be a float64 array of shape \(6, 1\)"),
    "a scaling array missing": (
        _set(["arrays"], "attributes/y_scale_.npy", _DELETE),
        lambda members: members.pop("attributes/y_scale_.npy"),
        "y_scale_ must be a float64 array.*got None"),
    "a zero scale": (
        *_replace_array("attributes/y_scale_.npy", np.zeros(1)), "y_scale_ must be positive"),
    "a non-finite window": (
        *_replace_array("attributes/last_window_.npy", np.full((6, 1), np.inf)),
        "last_window_.npy contains NaN or infinity"),
    "exogenous statistics without exogenous features": (
        _set(["attributes"], "X_mean_", [0.5]), None, r"X_mean_ must be None .*n_exog_=0"),
    "None attributes missing": (
        _set(["attributes"], "last_X_window_", _DELETE), None,
        "last_X_window_ must be None.*got no entry"),
    "a bad count": (
        _set(["attributes"], "n_series_", 0), None, "n_series_ must be an int >= 1, got 0"),
    "a horizon the regressor was not trained for": (
        _set(["params"], "horizon", 2), None,
        "regressor_ must take windows of 1 features and give 2 outputs.*got 1 features and "
        "3 outputs"),
    "a bad forecaster parameter": (
        _set(["params"], "strategy", "both"), None, "parameters do not fit.*strategy must be"),
    "an unknown forecaster parameter": (
        _set(["params"], "from_the_future", 1), None, "parameters do not fit.*from_the_future"),
    "a bad y_ndim": (_set([], "y_ndim", 3), None, "y_ndim must be 2, or 1"),
    "no regressor section": (
        _set([], "regressor", _DELETE), None, "metadata entry 'regressor' must be a dict"),
    "a classifier for a regressor": (
        _set(["regressor"], "class", "LSTMClassifier"), None,
        "'regressor' section must be an 'LSTMRegressor', got class 'LSTMClassifier'"),
    "a regressor inconsistent with itself": (
        _set(["regressor", "attributes"], "n_outputs_", 5), None,
        r"\(regressor_\): n_outputs_ \(5\) does not match the head's 3 outputs"),
    "an unexpected regressor member": (
        *_replace_array("regressor/extra.npy", np.zeros(2)),
        "unexpected array regressor/extra.npy"),
    "an unexpected forecaster member": (
        *_replace_array("head/coef.npy", np.zeros((4, 3), np.float32)),
        "unexpected array head/coef.npy"),
    "the regressor as a forecaster attribute": (
        _set(["attributes"], "regressor_", None), None, "'regressor_' is not a fitted attribute"),
    "a private forecaster attribute": (
        _set(["attributes"], "_y_ndim", 2), None, "'_y_ndim' is not a fitted attribute"),
    "a method as a forecaster attribute": (
        *_replace_array("attributes/predict.npy", np.zeros(1)),
        "'predict' is not a fitted attribute"),
}


@pytest.mark.parametrize("forgery", sorted(FORGED_FORECASTERS))
def test_refuses_a_forged_forecaster(tmp_path, rng, forgery):
    edit_metadata, edit_members, message = FORGED_FORECASTERS[forgery]
    model, _, _ = fit_forecaster(rng)
    path = tmp_path / "forecaster.npz"
    model.save(path)
    rewrite(path, edit_metadata, edit_members)
    with pytest.raises(ValueError, match=message):
        pylstm.load(path)
