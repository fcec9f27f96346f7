"""Command line for scripts: ``python -m pylstm {info,predict,export-onnx} ...``.

Every error ends the program with a one-line message on stderr and a non-zero
status (2 for bad usage, 1 for anything else), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn, Sequence

import numpy as np

from ._version import __version__

PROG = "python -m pylstm"


class _Failure(Exception):
    """An error already phrased for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage too; one line is enough
        _fail(f"{message} (see {PROG} --help)", status=2)


def _fail(message: str, status: int = 1) -> NoReturn:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Inspect, run and export pylstm model files "
                     "(written by LSTM.save, est.save or pylstm.save).")
    parser.add_argument("--version", action="version", version=f"pylstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    info = commands.add_parser("info", help="print what a model file holds (after checking it)")
    info.add_argument("model", metavar="MODEL")
    info.add_argument("--json", action="store_true", help="print the file's metadata as JSON")

    predict = commands.add_parser(
        "predict", help="run a model on INPUT.npy and write the result to OUT.npy")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("input", metavar="INPUT.npy", nargs="?",
                         help="(batch, time, features) for a layer; what the estimator's "
                              "predict takes for an estimator; for a forecaster, optional: "
                              "the series to continue (default: its training series)")
    predict.add_argument("-o", "--output", metavar="OUT.npy", required=True,
                         help="a layer writes its output sequence (batch, time, D * P), a "
                              "classifier its labels, a regressor its predictions, a "
                              "forecaster its forecast")
    predict.add_argument("--proba", action="store_true",
                         help="classifiers: write class probabilities (batch, n_classes)")
    predict.add_argument("--lengths", metavar="LENGTHS.npy",
                         help="layers: valid steps of each sequence, shape (batch,)")
    predict.add_argument("--horizon", metavar="N", type=int,
                         help="forecasters: steps to forecast (default: its horizon)")
    predict.add_argument("--exog", metavar="X.npy",
                         help="forecasters fitted with exogenous features: their values over "
                              "the horizon, preceded by INPUT's steps if INPUT is given")

    export = commands.add_parser("export-onnx", help="export a model file to ONNX")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("output", metavar="OUT.onnx")
    export.add_argument("--with-lengths", action="store_true",
                        help="add an int64 input 'lengths' (batch,)")

    args = parser.parse_args(argv)
    try:
        {"info": _info, "predict": _predict, "export-onnx": _export}[args.command](args)
    except _Failure as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", status=130)
    except MemoryError:
        _fail("out of memory")
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        _fail(_message(exc))
    return 0


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return text
    return f"{type(exc).__name__}: {text}"


# ============================================================================ commands
def _info(args: argparse.Namespace) -> None:
    from ._io import REGRESSOR_PREFIX, REGRESSOR_SECTION, build_model, read_model_file

    metadata, arrays = read_model_file(args.model)
    # the checks of load() too: info never vouches for a file that load() refuses
    build_model(metadata, arrays, repr(args.model))
    if args.json:
        print(json.dumps(metadata, indent=1))
        return
    kind = metadata["class"]
    lines = [f"{args.model}: pylstm {kind}, model-file format {metadata['format_version']}, "
             f"written by pylstm {metadata.get('pylstm_version', '?')}"]
    if kind == "LSTM":
        lines += _layer_lines(metadata, "  ")
    elif kind == "LSTMForecaster":
        params, attributes = metadata["params"], metadata["attributes"]
        headline = ("lookback", "horizon", "strategy", "relative")
        lines.append("  forecaster: " + ", ".join(
            f"{key}={_short(params.get(key))}" for key in headline))
        shape = "(n_timesteps,)" if metadata["y_ndim"] == 1 else "(n_timesteps, n_series)"
        lines.append(f"  fitted on y of shape {shape}, n_series_={attributes['n_series_']!r}, "
                     f"n_exog_={attributes['n_exog_']!r}")
        lines.append("  other params: " + ", ".join(
            f"{key}={_short(value)}" for key, value in sorted(params.items())
            if key not in headline))
        regressor = metadata[REGRESSOR_SECTION]
        lines.append(f"  regressor_: {regressor['class']}, on the scaled windows")
        lines += _estimator_lines(regressor, arrays, REGRESSOR_PREFIX, "    ")
    else:
        lines += _estimator_lines(metadata, arrays, "", "  ")
    n_parameters = sum(array.size for member, array in arrays.items()
                       if member.startswith(("lstm/", "head/", f"{REGRESSOR_PREFIX}lstm/",
                                             f"{REGRESSOR_PREFIX}head/")))
    lines.append(f"  {n_parameters} parameters in {len(arrays)} arrays:")
    width = max([32] + [len(member) - len(".npy") + 1 for member in arrays])
    for member, array in arrays.items():
        lines.append(f"    {member[:-len('.npy')]:<{width}} {str(array.shape):<16} "
                     f"{array.dtype}")
    print("\n".join(lines))


def _layer_lines(section: dict[str, Any], indent: str) -> list[str]:
    layer = section["lstm"]
    return [f"{indent}layer: " + ", ".join(f"{key}={layer[key]!r}" for key in layer)]


def _estimator_lines(section: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str,
                     indent: str) -> list[str]:
    """What ``info`` says of a classifier or regressor (also a forecaster's regressor_)."""
    lines = _layer_lines(section, indent)
    attributes = section["attributes"]
    coef = arrays[f"{prefix}head/coef.npy"]
    lines.append(f"{indent}head: ({coef.shape[0]} features) -> {coef.shape[1]} outputs")
    if f"{prefix}attributes/classes_.npy" in arrays:
        classes = arrays[f"{prefix}attributes/classes_.npy"].tolist()
        lines.append(f"{indent}classes_: {_short(classes)}")
    if section["input_ndim"] == 2:
        shape = "(n_samples, n_timesteps) univariate series"
    else:
        shape = "(n_samples, n_timesteps, n_features)"
    lines.append(f"{indent}fitted on X of shape {shape}, "
                 f"n_features_in_={attributes.get('n_features_in_')!r}")
    for key in ("n_iter_", "loss_", "best_validation_score_"):
        if attributes.get(key) is not None:
            lines.append(f"{indent}{key}: {attributes[key]!r}")
    lines.append(f"{indent}params: " + ", ".join(
        f"{key}={_short(value)}" for key, value in sorted(section["params"].items())))
    return lines


def _predict(args: argparse.Namespace) -> None:
    from ._io import atomic_write, load
    from ._layer import LSTM

    model = load(args.model)
    kind = "layer" if isinstance(model, LSTM) else type(model).__name__
    forecaster = kind == "LSTMForecaster"
    if args.proba and not hasattr(model, "predict_proba"):
        raise _Failure(f"--proba applies to classifiers; this model file holds a {kind}")
    if args.lengths is not None and kind != "layer":
        raise _Failure(f"--lengths applies to layers; this model file holds a {kind}")
    if not forecaster:
        for option, value in (("--horizon", args.horizon), ("--exog", args.exog)):
            if value is not None:
                raise _Failure(f"{option} applies to forecasters; this model file holds a "
                               f"{kind}")
        if args.input is None:
            raise _Failure(f"INPUT.npy is required for a {kind}; only a forecaster predicts "
                           f"without input (from the end of its training series)")
    x = None if args.input is None else _read_npy(args.input, "INPUT")
    if kind == "layer":
        lengths = None if args.lengths is None else _read_npy(args.lengths, "LENGTHS")
        result, _ = model(x, lengths=lengths)
    elif forecaster:
        exog = None if args.exog is None else _read_npy(args.exog, "X")
        result = model.predict(args.horizon, X=exog, y=x)
    elif args.proba:
        result = model.predict_proba(x)
    else:
        result = model.predict(x)
    result = np.asarray(result)
    if result.dtype.hasobject:  # string labels: a .npy without pickle
        result = result.astype(str)

    def write(file: Any) -> None:
        np.lib.format.write_array(file, result, allow_pickle=False)

    atomic_write(args.output, write)


def _export(args: argparse.Namespace) -> None:
    from ._io import load
    from ._onnx import to_onnx

    to_onnx(load(args.model), args.output, with_lengths=args.with_lengths)


# ============================================================================ helpers
def _read_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise _Failure(f"{what} {path!r} is not a file")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise _Failure(f"{what} {path!r} is not a readable .npy array of numbers: {exc}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise _Failure(f"{what} {path!r} is an .npz archive; give one array saved with np.save")
    return array


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
