"""Model files: one file per layer or fitted estimator, arrays plus JSON metadata, never pickled.

A model file is a zip archive (stored, not compressed; NumPy's ``np.load``
reads it as an ``.npz``) with these members::

    pylstm.json                         metadata, UTF-8 JSON, always the first member
    lstm/weight_ih_l0.npy, ...          the layer's parameters under torch's names
    head/coef.npy, head/intercept.npy   an estimator's linear head
    attributes/classes_.npy, ...        an estimator's array-valued fitted attributes

and metadata::

    {"format": "pylstm-model", "format_version": 1, "pylstm_version": "0.1.0",
     "class": "LSTM" | "LSTMClassifier" | "LSTMRegressor" | "LSTMForecaster",
     "lstm": {"input_size", "hidden_size", "num_layers", "bias", "bidirectional",
              "proj_size", "dropout", "dtype"},
     "arrays": {member: {"shape": [...], "dtype": "<f4"}},
     # estimators only:
     "params": get_params(deep=False), "input_ndim": 2 | 3,
     "attributes": {name: value},          # JSON-valued fitted attributes
     "object_arrays": [name, ...]}         # string arrays that were of dtype object

An :class:`~pylstm.LSTMForecaster` has no ``lstm`` or ``input_ndim`` of its own:
its ``params``, ``attributes`` and ``object_arrays`` are the forecaster's (the
scaling statistics and last training window under ``attributes/``; those that
are None, such as ``X_mean_`` without exogenous features, as JSON nulls), its
``"y_ndim": 1 | 2`` is the number of dimensions of ``y`` in ``fit``, and its
fitted ``regressor_`` is an estimator section exactly as above, in
``"regressor": {"class": "LSTMRegressor", "params", "input_ndim", "lstm",
"attributes", "object_arrays"}`` with its members under ``regressor/``
(``regressor/lstm/...``, ``regressor/head/...``, ``regressor/attributes/...``).

Estimators are written through one explicit protocol, so that new parameters
and fitted attributes travel without changes here:

* ``get_params(deep=False)``: numbers, strings, booleans, None, NumPy dtypes,
  ``RandomState`` instances, and lists, tuples and dicts of those;
* ``lstm_`` (a :class:`~pylstm.LSTM`), ``head_coef_`` and ``head_intercept_``
  (a forecaster: ``regressor_``);
* every other public fitted attribute found in ``vars(estimator)`` (a name
  ending in ``_``): JSON-like values go to the metadata, arrays (numbers,
  booleans or strings) to ``attributes/``; any other type refuses to save;
* the number of dimensions X had in ``fit`` (``input_ndim``), which decides how
  a 2-D X is read at prediction time (a forecaster: ``y_ndim``, which decides
  the shape of its forecasts).

Training state (optimizer moments, the random stream, best-epoch copies) is not
part of a model file: a loaded estimator predicts exactly as the saved one and
can be refitted; to resume training where it stopped, pickle it instead.

Loading never unpickles. Every member is checked against the metadata
(presence, no extra members, shape, dtype, no object arrays, finite floats)
and the metadata against itself (shapes implied by the hyperparameters; a
forecaster's scaling arrays and windows against its lookback, series and
exogenous features, and those against its regressor's inputs and outputs)
before any weight is used. Any problem with the file is a ``ValueError``.
Writing goes to a temporary file in the target directory that is fsynced and
then renamed over the final name, so a crash never leaves a half-written model
behind.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import secrets
import sys
import zipfile
from typing import Any, Callable

import numpy as np

from ._layer import LSTM
from ._version import __version__

FORMAT = "pylstm-model"
FORMAT_VERSION = 1
METADATA = "pylstm.json"
ESTIMATOR_CLASSES = ("LSTMClassifier", "LSTMRegressor")
FORECASTER_CLASS = "LSTMForecaster"
MODEL_CLASSES = ("LSTM", *ESTIMATOR_CLASSES, FORECASTER_CLASS)
# A forecaster's regressor_: its section of the metadata and its members' prefix.
REGRESSOR_SECTION = "regressor"
REGRESSOR_PREFIX = "regressor/"

# Keys of the "lstm" section; the names of fitted attributes a file may set.
_LAYER_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size",
               "dropout", "dtype")
# A lowercase name, or one led by a one-letter capital as scikit-learn names X's
# statistics (X_mean_); capitals may come later too (last_X_window_).
_ATTRIBUTE_NAME = re.compile(r"(?:[a-z]|[A-Z]_)[A-Za-z0-9_]*_\Z")
_ESTIMATOR_OWN = ("lstm_", "head_coef_", "head_intercept_")
_FORECASTER_OWN = ("regressor_",)
# Array kinds a file may hold: bool, signed and unsigned int, float, unicode strings.
_ARRAY_KINDS = "biufU"
_MAX_METADATA_BYTES = 64 << 20
# Fixed member timestamps: the same model always gives the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ============================================================================ public API
def save(model: Any, path: str | os.PathLike) -> None:
    """Write a :class:`~pylstm.LSTM` or a fitted estimator to one model file.

    Parameters
    ----------
    model : pylstm.LSTM, LSTMClassifier, LSTMRegressor or LSTMForecaster
        Estimators must be fitted.
    path : str or path-like
        Written atomically (temporary file, fsync, rename); an existing file is replaced.

    Raises
    ------
    TypeError
        For another kind of object, or an estimator parameter or fitted
        attribute that a model file cannot hold.
    sklearn.exceptions.NotFittedError
        For an estimator that is not fitted.
    """
    metadata: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                "pylstm_version": __version__}
    arrays: dict[str, np.ndarray] = {}
    name = _estimator_class_name(model)
    if type(model) is LSTM:
        metadata["class"] = "LSTM"
        _put_layer(model, metadata, arrays)
    elif name is not None:
        metadata["class"] = name
        _put_estimator(model, metadata, arrays)
    elif _is_forecaster(model):
        metadata["class"] = FORECASTER_CLASS
        _put_forecaster(model, metadata, arrays)
    else:
        raise TypeError(f"save expects a pylstm.LSTM, LSTMClassifier, LSTMRegressor or "
                        f"LSTMForecaster, got {type(model).__module__}."
                        f"{type(model).__qualname__}")
    metadata["arrays"] = {member: {"shape": list(array.shape), "dtype": array.dtype.str}
                          for member, array in arrays.items()}
    text = json.dumps(metadata, indent=1, allow_nan=False).encode("utf-8")

    def write(file: Any) -> None:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(zipfile.ZipInfo(METADATA, _ZIP_DATE), text)
            for member, array in arrays.items():
                with archive.open(zipfile.ZipInfo(member, _ZIP_DATE), "w",
                                  force_zip64=True) as stream:
                    np.lib.format.write_array(stream, array, allow_pickle=False)

    atomic_write(path, write)


def load(path: str | os.PathLike) -> Any:
    """Read a model file written by :func:`save`.

    Returns
    -------
    pylstm.LSTM, LSTMClassifier, LSTMRegressor or LSTMForecaster
        A layer with the saved weights, or a fitted estimator whose predictions
        are identical to the saved one's.

    Raises
    ------
    ValueError
        If the file is not a pylstm model file, is truncated or corrupt, was
        written by a newer format version, holds an object array, or anything
        in it disagrees with its metadata.
    OSError
        If the file cannot be opened (e.g. FileNotFoundError).
    """
    metadata, arrays = read_model_file(path)
    return build_model(metadata, arrays, _describe(path))


def build_model(metadata: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> Any:
    """The layer or estimator from the contents :func:`read_model_file` returned, fully checked."""
    if metadata["class"] == "LSTM":
        unexpected = sorted(member for member in arrays if not member.startswith("lstm/"))
        if unexpected:
            raise ValueError(f"{where}: a layer's file holds unexpected arrays {unexpected}")
        return _build_layer(metadata, arrays, "", where)
    if metadata["class"] == FORECASTER_CLASS:
        return _build_forecaster(metadata, arrays, where)
    return _build_estimator(metadata, arrays, "", where)


# ============================================================================ reading
def read_model_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and arrays of a model file, after every format-level check.

    The semantic checks (shapes implied by the hyperparameters) happen in
    :func:`load`, which the CLI's ``info`` also runs.
    """
    where = _describe(path)
    with open(os.fspath(path), "rb") as file:
        try:
            archive = zipfile.ZipFile(file)
        except zipfile.BadZipFile:
            raise ValueError(f"{where} is not a pylstm model file (not a zip archive; it may "
                             f"also be truncated)") from None
        with archive:
            try:
                return _read_archive(archive, where)
            except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError,
                    NotImplementedError, RuntimeError) as exc:  # e.g. bad CRC, short member
                raise ValueError(f"{where} is truncated or corrupt: {exc}") from None


def _read_archive(archive: zipfile.ZipFile, where: str
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    members = {info.filename: info for info in archive.infolist()}
    if METADATA not in members:
        raise ValueError(f"{where} is not a pylstm model file (a zip archive without "
                         f"{METADATA}; members: {_preview(members)})")
    if members[METADATA].file_size > _MAX_METADATA_BYTES:
        raise ValueError(f"{where}: {METADATA} is implausibly large "
                         f"({members[METADATA].file_size} bytes)")
    try:
        metadata = json.loads(archive.read(METADATA).decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: {METADATA} is not valid JSON ({exc})") from None
    _check_header(metadata, where)
    table = _array_table(metadata, where)
    missing = sorted(set(table) - set(members))
    unexpected = sorted(set(members) - set(table) - {METADATA})
    if missing:
        raise ValueError(f"{where} is truncated or incomplete: missing arrays {missing}")
    if unexpected:
        raise ValueError(f"{where} holds members its metadata does not list: {unexpected}")
    arrays = {}
    for member, (shape, dtype) in table.items():
        nbytes = math.prod(shape) * dtype.itemsize
        if members[member].file_size < nbytes:
            raise ValueError(f"{where} is truncated or corrupt: member {member} has "
                             f"{members[member].file_size} bytes, its shape {shape} and "
                             f"dtype {dtype} need {nbytes}")
        with archive.open(member) as stream:
            found_shape, found_dtype = _npy_header(stream, member, where)
        if found_dtype != dtype or found_shape != shape:
            raise ValueError(f"{where}: array {member} has shape {found_shape} and dtype "
                             f"{found_dtype}, its metadata says {shape} and {dtype}")
        with archive.open(member) as stream:
            try:
                array = np.lib.format.read_array(stream, allow_pickle=False)
            except ValueError as exc:  # short read
                raise ValueError(f"{where} is truncated or corrupt: member {member}: "
                                 f"{exc}") from None
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{where}: array {member} contains NaN or infinity")
        arrays[member] = array
    return metadata, arrays


def _check_header(metadata: Any, where: str) -> None:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{where} is not a pylstm model file ({METADATA} does not say "
                         f"format {FORMAT!r})")
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} was written by pylstm {metadata.get('pylstm_version', '?')} in model-file "
            f"format {version}; this pylstm ({__version__}) reads format {FORMAT_VERSION} and "
            f"older: upgrade pylstm to load it")
    kind = metadata.get("class")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{where}: unknown model class {kind!r}; expected one of "
                         f"{list(MODEL_CLASSES)}")


def _array_table(metadata: dict[str, Any], where: str
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The metadata's ``arrays`` entry as {member: (shape, dtype)}, each entry checked."""
    entries = metadata.get("arrays")
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: metadata has no 'arrays' table")
    table = {}
    for member, entry in entries.items():
        if not member.endswith(".npy") or member == METADATA:
            raise ValueError(f"{where}: bad array member name {member!r}")
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError(f"{where}: array {member} has a bad shape in the metadata: "
                             f"{shape!r}")
        try:
            dtype = np.dtype(entry.get("dtype"))
        except TypeError:
            raise ValueError(f"{where}: array {member} has a bad dtype in the metadata: "
                             f"{entry.get('dtype')!r}") from None
        if dtype.hasobject:
            raise ValueError(f"{where} declares an object array ({member}); model files hold "
                             f"plain numbers and strings only and are never unpickled")
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.shape:
            raise ValueError(f"{where}: array {member} has unsupported dtype {dtype}")
        table[member] = (tuple(shape), dtype)
    return table


def _npy_header(stream: Any, member: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's .npy header, without reading its data."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise ValueError(f"{where}: member {member} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"{where} carries an object array ({member}); model files hold plain "
                         f"numbers and strings only and are never unpickled")
    return tuple(shape), dtype


# ============================================================================ layers
def _put_layer(layer: LSTM, section: dict[str, Any], arrays: dict[str, np.ndarray],
               prefix: str = "") -> None:
    """The layer's hyperparameters into ``section["lstm"]``, its parameters to ``{prefix}lstm/``."""
    section["lstm"] = {name: getattr(layer, name) for name in _LAYER_KEYS}
    section["lstm"]["dtype"] = layer.dtype.name
    for name, value in layer.state_dict().items():
        arrays[f"{prefix}lstm/{name}.npy"] = value


def _build_layer(section: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str,
                 where: str) -> LSTM:
    """A layer from ``section["lstm"]`` and the members under ``{prefix}lstm/``, once they
    match the hyperparameters exactly."""
    prefix += "lstm/"
    hyper = section.get("lstm")
    if not isinstance(hyper, dict) or set(hyper) != set(_LAYER_KEYS):
        raise ValueError(f"{where}: the 'lstm' section must have exactly the keys "
                         f"{list(_LAYER_KEYS)}, got {hyper!r}")
    for name in ("input_size", "hidden_size", "num_layers", "proj_size"):
        value = hyper[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: lstm {name} must be a non-negative int, got {value!r}")
    for name in ("bias", "bidirectional"):
        if not isinstance(hyper[name], bool):
            raise ValueError(f"{where}: lstm {name} must be a bool, got {hyper[name]!r}")
    if hyper["dtype"] not in ("float32", "float64") or \
            isinstance(hyper["dropout"], bool) or not isinstance(hyper["dropout"], (int, float)):
        raise ValueError(f"{where}: lstm dtype must be 'float32' or 'float64' and dropout a "
                         f"number, got {hyper['dtype']!r} and {hyper['dropout']!r}")
    dtype = np.dtype(hyper["dtype"])
    if hyper["num_layers"] > len(arrays):  # each layer has at least two arrays
        raise ValueError(f"{where}: num_layers={hyper['num_layers']} but the file holds "
                         f"{len(arrays)} arrays")
    # The parameter names and shapes these hyperparameters imply, asked of the
    # layer itself but before constructing it, so that a forged file cannot
    # make the constructor allocate more than the file holds.
    probe = LSTM.__new__(LSTM)
    vars(probe).update(hyper)
    expected = {f"{prefix}{name}.npy": shape for name, shape in probe._parameter_shapes()}
    present = {member for member in arrays if member.startswith(prefix)}
    if present != set(expected):
        raise ValueError(
            f"{where}: the layer's arrays do not match its hyperparameters: missing "
            f"{sorted(set(expected) - present)}, unexpected {sorted(present - set(expected))}")
    for member, shape in expected.items():
        if arrays[member].shape != shape or arrays[member].dtype != dtype:
            raise ValueError(f"{where}: {member} must have shape {shape} and dtype {dtype}, "
                             f"got {arrays[member].shape} and {arrays[member].dtype}")
    try:
        layer = LSTM(hyper["input_size"], hyper["hidden_size"], hyper["num_layers"],
                     bias=hyper["bias"], bidirectional=hyper["bidirectional"],
                     proj_size=hyper["proj_size"], dropout=hyper["dropout"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid layer hyperparameters: {exc}") from None
    layer.load_state_dict({member[len(prefix):-len(".npy")]: array
                           for member, array in arrays.items() if member in expected})
    return layer


# ============================================================================ estimators
def _estimator_class_name(model: Any) -> str | None:
    """'LSTMClassifier' or 'LSTMRegressor' if ``model`` is exactly one, else None."""
    # An estimator exists only once its module is imported; checking sys.modules
    # keeps save() of anything else from importing scikit-learn.
    estimators = sys.modules.get("pylstm._estimators")
    if estimators is None:
        return None
    for name in ESTIMATOR_CLASSES:
        if type(model) is getattr(estimators, name):
            return name
    return None


def _is_forecaster(model: Any) -> bool:
    """Whether ``model`` is exactly an LSTMForecaster (without importing scikit-learn)."""
    forecaster = sys.modules.get("pylstm._forecaster")
    return forecaster is not None and type(model) is forecaster.LSTMForecaster


def _estimator_module(module: str, name: str, where: str) -> Any:
    """``pylstm.<module>``, or an ImportError naming the extra a ``name`` needs."""
    try:
        return importlib.import_module(f".{module}", __package__)
    except ImportError as exc:
        if "sklearn" not in str(exc):
            raise
        raise ImportError(f"{where} holds a {name}, which needs scikit-learn: "
                          f"pip install 'pylstm[sklearn]'") from exc


def _put_estimator(estimator: Any, section: dict[str, Any], arrays: dict[str, np.ndarray],
                   prefix: str = "") -> None:
    """A fitted classifier or regressor into ``section`` and the members under ``prefix``."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    section["params"] = _encode_params(estimator)
    section["input_ndim"] = int(estimator._fit_ndim)
    _put_layer(estimator.lstm_, section, arrays, prefix)
    arrays[f"{prefix}head/coef.npy"] = np.array(estimator.head_coef_)
    arrays[f"{prefix}head/intercept.npy"] = np.array(estimator.head_intercept_)
    _put_attributes(estimator, _ESTIMATOR_OWN, section, arrays, prefix)


def _put_forecaster(forecaster: Any, metadata: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> None:
    """A fitted forecaster: its own parameters and attributes, then ``regressor_`` as an
    estimator section under ``regressor/``."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(forecaster)
    metadata["params"] = _encode_params(forecaster)
    metadata["y_ndim"] = int(forecaster._y_ndim)
    _put_attributes(forecaster, _FORECASTER_OWN, metadata, arrays, "")
    regressor = forecaster.regressor_
    if _estimator_class_name(regressor) != "LSTMRegressor":
        raise TypeError(f"cannot save LSTMForecaster.regressor_: expected a pylstm "
                        f"LSTMRegressor, got {type(regressor).__module__}."
                        f"{type(regressor).__qualname__}")
    section = metadata[REGRESSOR_SECTION] = {"class": "LSTMRegressor"}
    _put_estimator(regressor, section, arrays, REGRESSOR_PREFIX)


def _encode_params(estimator: Any) -> dict[str, Any]:
    name = type(estimator).__name__
    return {key: _encode(value, f"{name} parameter {key}")
            for key, value in estimator.get_params(deep=False).items()}


def _put_attributes(estimator: Any, own: tuple[str, ...], section: dict[str, Any],
                    arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Every public fitted attribute but those in ``own``: arrays to
    ``{prefix}attributes/``, other values to ``section["attributes"]``."""
    name = type(estimator).__name__
    attributes, object_arrays = {}, []
    for key, value in vars(estimator).items():
        if key.startswith("_") or not key.endswith("_") or key in own:
            continue  # private state, a parameter, or saved by the caller
        if not _ATTRIBUTE_NAME.match(key):  # never drop a fitted attribute silently
            raise TypeError(f"cannot save {name} fitted attribute {key}: a model file holds "
                            f"names like {_ATTRIBUTE_NAME.pattern!r} (pickle it instead)")
        if isinstance(value, np.ndarray):
            array, from_object = _plain_array(value, f"{name}.{key}")
            arrays[f"{prefix}attributes/{key}.npy"] = array
            if from_object:
                object_arrays.append(key)
        else:
            attributes[key] = _encode(value, f"{name} fitted attribute {key}")
    section["attributes"] = attributes
    section["object_arrays"] = object_arrays


def _plain_array(value: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """``value`` as an array that needs no pickle, and whether it was an object array of str."""
    if value.dtype.hasobject:
        if not all(isinstance(item, str) for item in value.flat):
            raise TypeError(f"cannot save {what}: an object array holding other than strings "
                            f"(pickle the estimator instead)")
        return np.array(value.tolist(), dtype=str).reshape(value.shape), True
    if value.dtype.kind not in _ARRAY_KINDS or value.dtype.fields is not None:
        raise TypeError(f"cannot save {what}: arrays of dtype {value.dtype} are not supported")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise TypeError(f"cannot save {what}: it contains NaN or infinity")
    return np.ascontiguousarray(value), False


def _check_section(section: dict[str, Any], entries: tuple[tuple[str, type], ...],
                   where: str) -> None:
    for key, kind in entries:
        if not isinstance(section.get(key), kind) or isinstance(section.get(key), bool):
            raise ValueError(f"{where}: metadata entry {key!r} must be a {kind.__name__}")


def _build_estimator(section: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str,
                     where: str) -> Any:
    """A classifier or regressor from ``section`` and the members under ``prefix``; refuses
    any other member under ``prefix``."""
    name = section["class"]
    _estimators = _estimator_module("_estimators", name, where)
    _check_section(section, (("params", dict), ("attributes", dict), ("object_arrays", list),
                             ("input_ndim", int)), where)
    estimator = getattr(_estimators, name)()
    try:
        params = {key: _decode(value) for key, value in section["params"].items()}
        estimator.set_params(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: its {name} parameters do not fit this pylstm "
                         f"({__version__}): {exc}") from None
    layer = _build_layer(section, arrays, prefix, where)
    coef_member, intercept_member = f"{prefix}head/coef.npy", f"{prefix}head/intercept.npy"
    coef, intercept = arrays.get(coef_member), arrays.get(intercept_member)
    rows = layer.num_directions * layer.output_size
    if coef is None or intercept is None or coef.ndim != 2 or coef.shape[0] != rows or \
            intercept.shape != coef.shape[1:] or coef.dtype != layer.dtype or \
            intercept.dtype != layer.dtype:
        raise ValueError(f"{where}: the head must be coef ({rows}, n_outputs) and intercept "
                         f"(n_outputs,) of dtype {layer.dtype}, got "
                         f"{None if coef is None else (coef.shape, coef.dtype)} and "
                         f"{None if intercept is None else (intercept.shape, intercept.dtype)}")
    input_ndim = section["input_ndim"]
    if input_ndim not in (2, 3) or (input_ndim == 2 and layer.input_size != 1):
        raise ValueError(f"{where}: input_ndim must be 3, or 2 for a layer with input_size 1, "
                         f"got {input_ndim} with input_size {layer.input_size}")

    # _build_layer has matched every member under {prefix}lstm/ to the layer
    used = {member for member in arrays if member.startswith(f"{prefix}lstm/")}
    attributes = _read_attributes(estimator, _ESTIMATOR_OWN, section, arrays, prefix,
                                  used | {coef_member, intercept_member}, where)
    n_outputs = coef.shape[1]
    classes = attributes.get("classes_")
    if name == "LSTMClassifier" and (classes is None or classes.shape != (n_outputs,)):
        raise ValueError(f"{where}: a classifier needs classes_ of shape ({n_outputs},) to "
                         f"match its head, got {None if classes is None else classes.shape}")
    if name == "LSTMRegressor" and attributes.get("n_outputs_") != n_outputs:
        raise ValueError(f"{where}: n_outputs_ ({attributes.get('n_outputs_')!r}) does not "
                         f"match the head's {n_outputs} outputs")
    features = attributes.get("n_features_in_")
    if input_ndim == 3 and features != layer.input_size:
        raise ValueError(f"{where}: n_features_in_ ({features!r}) does not match the layer's "
                         f"input_size ({layer.input_size})")

    # The estimator's model, as _estimators keeps it: the LSTM, the head as
    # one flat vector (weights then intercepts), and the ndim of fit's X.
    estimator.lstm_ = layer
    estimator._head = np.concatenate([coef.ravel(), intercept])
    estimator._n_head_outputs = n_outputs
    estimator._fit_ndim = input_ndim
    for key, value in attributes.items():
        setattr(estimator, key, value)
    return estimator


def _build_forecaster(metadata: dict[str, Any], arrays: dict[str, np.ndarray],
                      where: str) -> Any:
    """A forecaster from the metadata's own entries and ``attributes/``, around the
    regressor from the ``regressor`` section and ``regressor/``."""
    _forecaster = _estimator_module("_forecaster", FORECASTER_CLASS, where)
    _check_section(metadata, (("params", dict), ("attributes", dict), ("object_arrays", list),
                              ("y_ndim", int), (REGRESSOR_SECTION, dict)), where)
    try:
        params = {key: _decode(value) for key, value in metadata["params"].items()}
        forecaster = _forecaster.LSTMForecaster(**params)
        forecaster._check_parameters()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: its {FORECASTER_CLASS} parameters do not fit this pylstm "
                         f"({__version__}): {exc}") from None
    section = metadata[REGRESSOR_SECTION]
    if section.get("class") != "LSTMRegressor":
        raise ValueError(f"{where}: the forecaster's {REGRESSOR_SECTION!r} section must be an "
                         f"'LSTMRegressor', got class {section.get('class')!r}")
    regressor = _build_estimator(section, arrays, REGRESSOR_PREFIX, f"{where} (regressor_)")
    # _build_estimator has accounted for every member under regressor/
    used = {member for member in arrays if member.startswith(REGRESSOR_PREFIX)}
    attributes = _read_attributes(forecaster, _FORECASTER_OWN, metadata, arrays, "", used,
                                  where)
    _check_forecaster(forecaster, attributes, metadata["y_ndim"], regressor, where)
    forecaster.regressor_ = regressor
    forecaster._y_ndim = metadata["y_ndim"]
    for key, value in attributes.items():
        setattr(forecaster, key, value)
    return forecaster


def _check_forecaster(forecaster: Any, attributes: dict[str, Any], y_ndim: int,
                      regressor: Any, where: str) -> None:
    """The fitted state predict() reads: counts, the shape and dtype of every array (or None
    without exogenous features), and the regressor's inputs and outputs they imply."""
    counts = {}
    for key, minimum in (("n_series_", 1), ("n_exog_", 0)):
        value = attributes.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{where}: {key} must be an int >= {minimum}, got {value!r}")
        counts[key] = value
    n_series, n_exog = counts["n_series_"], counts["n_exog_"]
    if y_ndim not in (1, 2) or (y_ndim == 1 and n_series != 1):
        raise ValueError(f"{where}: y_ndim must be 2, or 1 for a single series, got {y_ndim} "
                         f"with n_series_={n_series}")
    lookback = forecaster.lookback
    shapes = {"y_mean_": (n_series,), "y_scale_": (n_series,),
              "last_window_": (lookback, n_series)}
    exogenous = {"X_mean_": (n_exog,), "X_scale_": (n_exog,),
                 "last_X_window_": (lookback, n_exog)}
    if n_exog:
        shapes.update(exogenous)
    else:
        for key in exogenous:
            if key not in attributes or attributes[key] is not None:
                found = _summary(attributes[key]) if key in attributes else "no entry"
                raise ValueError(f"{where}: {key} must be None for a forecaster without "
                                 f"exogenous features (n_exog_=0), got {found}")
    for key, shape in shapes.items():
        value = attributes.get(key)
        if not isinstance(value, np.ndarray) or value.shape != shape or \
                value.dtype != np.float64:
            raise ValueError(f"{where}: {key} must be a float64 array of shape {shape} "
                             f"(lookback={lookback}, n_series_={n_series}, n_exog_={n_exog}), "
                             f"got {_summary(value)}")
    for key in ("y_scale_", "X_scale_"):
        if key in shapes and not (attributes[key] > 0).all():
            raise ValueError(f"{where}: {key} must be positive")
    # the windows _inputs builds: series values, then an observed flag and the features
    features = n_series + (1 + n_exog if n_exog else 0)
    outputs = forecaster._model_horizon * n_series
    if regressor._fit_ndim != 3 or regressor.n_features_in_ != features or \
            regressor.n_outputs_ != outputs:
        raise ValueError(f"{where}: regressor_ must take windows of {features} features and "
                         f"give {outputs} outputs (n_series_={n_series}, n_exog_={n_exog}, "
                         f"strategy={forecaster.strategy!r}, horizon={forecaster.horizon}), "
                         f"got {regressor.n_features_in_} features and "
                         f"{regressor.n_outputs_} outputs")


def _read_attributes(estimator: Any, own: tuple[str, ...], section: dict[str, Any],
                     arrays: dict[str, np.ndarray], prefix: str, used: set[str],
                     where: str) -> dict[str, Any]:
    """The fitted attributes from ``section["attributes"]`` and ``{prefix}attributes/``;
    every member under ``prefix`` must be one of those or in ``used``."""
    object_arrays = section["object_arrays"]
    if not all(isinstance(key, str) and f"{prefix}attributes/{key}.npy" in arrays
               for key in object_arrays):
        raise ValueError(f"{where}: object_arrays must name array attributes of the file, "
                         f"got {object_arrays!r}")
    attributes = {}
    for key, value in section["attributes"].items():
        _check_attribute_name(estimator, own, key, where)
        try:
            attributes[key] = _decode(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: fitted attribute {key}: {exc}") from None
    folder = f"{prefix}attributes/"
    for member, array in arrays.items():
        if not member.startswith(prefix) or member in used:
            continue
        key = member[len(folder):-len(".npy")]
        if not member.startswith(folder) or key in attributes:
            raise ValueError(f"{where}: unexpected array {member}")
        _check_attribute_name(estimator, own, key, where)
        attributes[key] = array.astype(object) if key in object_arrays else array
    return attributes


def _check_attribute_name(estimator: Any, own: tuple[str, ...], key: str, where: str) -> None:
    # Only plain fitted-attribute names, never a method, property or private name.
    if not _ATTRIBUTE_NAME.match(key) or key in own or hasattr(type(estimator), key):
        raise ValueError(f"{where}: {key!r} is not a fitted attribute a model file may set")


# ============================================================================ JSON values
# Strict JSON has no tuples, infinities, dtypes or random states; such values
# become one-key objects tagged with "$". Every other JSON object is a "$dict".
def _encode(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list):
        return [_encode(item, what) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, what) for item in value]}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"$dict": {key: _encode(item, what) for key, item in value.items()}}
    if isinstance(value, np.dtype):
        return {"$dtype": value.str}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"$numpy_type": np.dtype(value).str}
    if isinstance(value, np.random.RandomState):
        state = value.get_state(legacy=False)
        return {"$RandomState": {"key": state["state"]["key"].tolist(),
                                 "pos": int(state["state"]["pos"]),
                                 "has_gauss": int(state["has_gauss"]),
                                 "gauss": float(state["gauss"])}}
    raise TypeError(f"cannot save {what}={value!r} (type {type(value).__name__}) in a model "
                    f"file: only numbers, strings, booleans, None, NumPy dtypes, RandomState "
                    f"and lists, tuples and dicts of those are supported (pickle it instead)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"bad tagged value {value!r}")
    (tag, content), = value.items()
    if tag == "$float" and content in ("inf", "-inf", "nan"):
        return float(content)
    if tag == "$tuple" and isinstance(content, list):
        return tuple(_decode(item) for item in content)
    if tag == "$dict" and isinstance(content, dict):
        return {key: _decode(item) for key, item in content.items()}
    if tag in ("$dtype", "$numpy_type") and isinstance(content, str):
        dtype = np.dtype(content)
        if dtype.hasobject or dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"unsupported dtype {content!r}")
        return dtype if tag == "$dtype" else dtype.type
    if tag == "$RandomState" and isinstance(content, dict):
        random_state = np.random.RandomState()
        random_state.set_state(("MT19937", np.asarray(content["key"], dtype=np.uint32),
                                int(content["pos"]), int(content["has_gauss"]),
                                float(content["gauss"])))
        return random_state
    raise ValueError(f"bad tagged value {value!r}")


# ============================================================================ writing
def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    On any error the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike of str, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory,
                             f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write through an existing file or link; mode 0o666 lets the umask decide.
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, f"cannot write {path!r}: {exc.strerror}") from None
    try:
        with open(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


# ============================================================================ helpers
def _describe(path: Any) -> str:
    try:
        return repr(os.fspath(path))
    except TypeError:
        return repr(path)


def _preview(members: dict[str, Any]) -> str:
    names = sorted(members)
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _summary(value: Any, limit: int = 60) -> str:
    """An array's shape and dtype, or a short repr of any other value, for messages."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
