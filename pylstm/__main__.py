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
    predict.add_argument("input", metavar="INPUT.npy",
                         help="(batch, time, features) for a layer; what the estimator's "
                              "predict takes for an estimator")
    predict.add_argument("-o", "--output", metavar="OUT.npy", required=True,
                         help="a layer writes its output sequence (batch, time, D * P), a "
                              "classifier its labels, a regressor its predictions")
    predict.add_argument("--proba", action="store_true",
                         help="classifiers: write class probabilities (batch, n_classes)")
    predict.add_argument("--lengths", metavar="LENGTHS.npy",
                         help="layers: valid steps of each sequence, shape (batch,)")

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
    from ._io import build_model, read_model_file

    metadata, arrays = read_model_file(args.model)
    # the checks of load() too: info never vouches for a file that load() refuses
    build_model(metadata, arrays, repr(args.model))
    if args.json:
        print(json.dumps(metadata, indent=1))
        return
    kind = metadata["class"]
    lines = [f"{args.model}: pylstm {kind}, model-file format {metadata['format_version']}, "
             f"written by pylstm {metadata.get('pylstm_version', '?')}"]
    layer = metadata["lstm"]
    n_parameters = sum(array.size for member, array in arrays.items()
                       if member.startswith(("lstm/", "head/")))
    lines.append("  layer: " + ", ".join(f"{key}={layer[key]!r}" for key in layer))
    if kind != "LSTM":
        attributes = metadata["attributes"]
        coef = arrays["head/coef.npy"]
        lines.append(f"  head: ({coef.shape[0]} features) -> {coef.shape[1]} outputs")
        if "attributes/classes_.npy" in arrays:
            lines.append(f"  classes_: {_short(arrays['attributes/classes_.npy'].tolist())}")
        if metadata["input_ndim"] == 2:
            shape = "(n_samples, n_timesteps) univariate series"
        else:
            shape = "(n_samples, n_timesteps, n_features)"
        lines.append(f"  fitted on X of shape {shape}, "
                     f"n_features_in_={attributes.get('n_features_in_')!r}")
        for key in ("n_iter_", "loss_", "best_validation_score_"):
            if attributes.get(key) is not None:
                lines.append(f"  {key}: {attributes[key]!r}")
        lines.append("  params: " + ", ".join(
            f"{key}={_short(value)}" for key, value in sorted(metadata["params"].items())))
    lines.append(f"  {n_parameters} parameters in {len(arrays)} arrays:")
    for member, array in arrays.items():
        lines.append(f"    {member[:-len('.npy')]:<32} {str(array.shape):<16} {array.dtype}")
    print("\n".join(lines))


def _predict(args: argparse.Namespace) -> None:
    from ._io import atomic_write, load
    from ._layer import LSTM

    model = load(args.model)
    x = _read_npy(args.input, "INPUT")
    if isinstance(model, LSTM):
        if args.proba:
            raise _Failure("--proba applies to classifiers; this model file holds a layer")
        lengths = None if args.lengths is None else _read_npy(args.lengths, "LENGTHS")
        result, _ = model(x, lengths=lengths)
    else:
        if args.lengths is not None:
            raise _Failure(f"--lengths applies to layers; this model file holds a "
                           f"{type(model).__name__}")
        if args.proba:
            if not hasattr(model, "predict_proba"):
                raise _Failure(f"--proba applies to classifiers; this model file holds a "
                               f"{type(model).__name__}")
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
