"""Model files: one file per layer or fitted estimator, arrays plus JSON metadata, never pickled.

A model file is a zip archive (stored, not compressed; NumPy's ``np.load``
reads it as an ``.npz``) with these members::

    pylstm.json                         metadata, UTF-8 JSON, always the first member
    lstm/weight_ih_l0.npy, ...          the layer's parameters under torch's names
    head/coef.npy, head/intercept.npy   an estimator's linear head
    attributes/classes_.npy, ...        an estimator's array-valued fitted attributes

and metadata::

    {"format": "pylstm-model", "format_version": 1, "pylstm_version": "0.1.0",
     "class": "LSTM" | "LSTMClassifier" | "LSTMRegressor",
     "lstm": {"input_size", "hidden_size", "num_layers", "bias", "bidirectional",
              "proj_size", "dropout", "dtype"},
     "arrays": {member: {"shape": [...], "dtype": "<f4"}},
     # estimators only:
     "params": get_params(deep=False), "input_ndim": 2 | 3,
     "attributes": {name: value},          # JSON-valued fitted attributes
     "object_arrays": [name, ...]}         # string arrays that were of dtype object

Estimators are written through one explicit protocol, so that new parameters
and fitted attributes travel without changes here:

* ``get_params(deep=False)``: numbers, strings, booleans, None, NumPy dtypes,
  ``RandomState`` instances, and lists, tuples and dicts of those;
* ``lstm_`` (a :class:`~pylstm.LSTM`), ``head_coef_`` and ``head_intercept_``;
* every other public fitted attribute found in ``vars(estimator)`` (a name
  ending in ``_``): JSON-like values go to the metadata, arrays (numbers,
  booleans or strings) to ``attributes/``; any other type refuses to save;
* the number of dimensions X had in ``fit`` (``input_ndim``), which decides how
  a 2-D X is read at prediction time.

Training state (optimizer moments, the random stream, best-epoch copies) is not
part of a model file: a loaded estimator predicts exactly as the saved one and
can be refitted; to resume training where it stopped, pickle it instead.

Loading never unpickles. Every member is checked against the metadata
(presence, no extra members, shape, dtype, no object arrays, finite floats)
and the metadata against itself (shapes implied by the hyperparameters) before
any weight is used. Any problem with the file is a ``ValueError``. Writing goes
to a temporary file in the target directory that is fsynced and then renamed
over the final name, so a crash never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
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

# Keys of the "lstm" section; the names of fitted attributes a file may set.
_LAYER_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size",
               "dropout", "dtype")
_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]*_\Z")
_ESTIMATOR_OWN = ("lstm_", "head_coef_", "head_intercept_")
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
    model : pylstm.LSTM, pylstm.LSTMClassifier or pylstm.LSTMRegressor
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
    else:
        raise TypeError(f"save expects a pylstm.LSTM, LSTMClassifier or LSTMRegressor, "
                        f"got {type(model).__module__}.{type(model).__qualname__}")
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
    pylstm.LSTM, pylstm.LSTMClassifier or pylstm.LSTMRegressor
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
        return _build_layer(metadata, arrays, "lstm/", where)
    return _build_estimator(metadata, arrays, where)


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
    if kind != "LSTM" and kind not in ESTIMATOR_CLASSES:
        raise ValueError(f"{where}: unknown model class {kind!r}; expected 'LSTM' or one of "
                         f"{list(ESTIMATOR_CLASSES)}")


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
def _put_layer(layer: LSTM, metadata: dict[str, Any], arrays: dict[str, np.ndarray],
               key: str = "lstm") -> None:
    metadata[key] = {name: getattr(layer, name) for name in _LAYER_KEYS}
    metadata[key]["dtype"] = layer.dtype.name
    for name, value in layer.state_dict().items():
        arrays[f"{key}/{name}.npy"] = value


def _build_layer(metadata: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str,
                 where: str) -> LSTM:
    """A layer from the ``lstm`` section, once its arrays match the hyperparameters exactly."""
    hyper = metadata.get("lstm")
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


def _put_estimator(estimator: Any, metadata: dict[str, Any],
                   arrays: dict[str, np.ndarray]) -> None:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    name = type(estimator).__name__
    metadata["params"] = {key: _encode(value, f"{name} parameter {key}")
                          for key, value in estimator.get_params(deep=False).items()}
    metadata["input_ndim"] = int(estimator._fit_ndim)
    _put_layer(estimator.lstm_, metadata, arrays)
    arrays["head/coef.npy"] = np.array(estimator.head_coef_)
    arrays["head/intercept.npy"] = np.array(estimator.head_intercept_)
    attributes, object_arrays = {}, []
    for key, value in vars(estimator).items():
        if not _ATTRIBUTE_NAME.match(key) or key in _ESTIMATOR_OWN:
            continue
        if isinstance(value, np.ndarray):
            array, from_object = _plain_array(value, f"{name}.{key}")
            arrays[f"attributes/{key}.npy"] = array
            if from_object:
                object_arrays.append(key)
        else:
            attributes[key] = _encode(value, f"{name} fitted attribute {key}")
    metadata["attributes"] = attributes
    metadata["object_arrays"] = object_arrays


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


def _build_estimator(metadata: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> Any:
    name = metadata["class"]
    try:
        from . import _estimators
    except ImportError as exc:
        if "sklearn" not in str(exc):
            raise
        raise ImportError(f"{where} holds a {name}, which needs scikit-learn: "
                          f"pip install 'pylstm[sklearn]'") from exc
    for key, kind in (("params", dict), ("attributes", dict), ("object_arrays", list),
                      ("input_ndim", int)):
        if not isinstance(metadata.get(key), kind) or isinstance(metadata.get(key), bool):
            raise ValueError(f"{where}: metadata entry {key!r} must be a {kind.__name__}")
    estimator = getattr(_estimators, name)()
    try:
        params = {key: _decode(value) for key, value in metadata["params"].items()}
        estimator.set_params(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: its {name} parameters do not fit this pylstm "
                         f"({__version__}): {exc}") from None
    layer = _build_layer(metadata, arrays, "lstm/", where)
    coef, intercept = arrays.get("head/coef.npy"), arrays.get("head/intercept.npy")
    rows = layer.num_directions * layer.output_size
    if coef is None or intercept is None or coef.ndim != 2 or coef.shape[0] != rows or \
            intercept.shape != coef.shape[1:] or coef.dtype != layer.dtype or \
            intercept.dtype != layer.dtype:
        raise ValueError(f"{where}: the head must be coef ({rows}, n_outputs) and intercept "
                         f"(n_outputs,) of dtype {layer.dtype}, got "
                         f"{None if coef is None else (coef.shape, coef.dtype)} and "
                         f"{None if intercept is None else (intercept.shape, intercept.dtype)}")
    input_ndim = metadata["input_ndim"]
    if input_ndim not in (2, 3) or (input_ndim == 2 and layer.input_size != 1):
        raise ValueError(f"{where}: input_ndim must be 3, or 2 for a layer with input_size 1, "
                         f"got {input_ndim} with input_size {layer.input_size}")

    object_arrays = metadata["object_arrays"]
    if not all(isinstance(key, str) and f"attributes/{key}.npy" in arrays
               for key in object_arrays):
        raise ValueError(f"{where}: object_arrays must name array attributes of the file, "
                         f"got {object_arrays!r}")
    attributes = {}
    for key, value in metadata["attributes"].items():
        _check_attribute_name(estimator, key, where)
        try:
            attributes[key] = _decode(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: fitted attribute {key}: {exc}") from None
    for member, array in arrays.items():
        if member.startswith("lstm/") or member in ("head/coef.npy", "head/intercept.npy"):
            continue
        key = member[len("attributes/"):-len(".npy")]
        if not member.startswith("attributes/") or key in attributes:
            raise ValueError(f"{where}: unexpected array {member}")
        _check_attribute_name(estimator, key, where)
        attributes[key] = array.astype(object) if key in object_arrays else array

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


def _check_attribute_name(estimator: Any, key: str, where: str) -> None:
    # Only plain fitted-attribute names, never a method, property or private name.
    if not _ATTRIBUTE_NAME.match(key) or key in _ESTIMATOR_OWN or hasattr(type(estimator), key):
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
