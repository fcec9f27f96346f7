"""The contestants of ``run_bench.py``: pylstm and its peers on the same weights.

Each builder returns a :class:`Contestant`: ``run()`` is the timed call and
``result()`` what the last run produced (for checking it against pylstm
before any timing). Peers whose library is missing are reported as such by
:func:`available`, never replaced by something else.

* torch: ``torch.nn.LSTM`` (or ``nn.LSTMCell`` for one step) loaded from
  pylstm's ``state_dict()``, CPU, inference under ``torch.inference_mode()``.
* onnxruntime: a graph with one ONNX ``LSTM`` node built here. onnxruntime's
  CPU kernel supports only ``layout=0`` (time-major), so the graph transposes
  the batch-first input and output itself: that work is part of its time, as
  pylstm's own layout handling is part of pylstm's.
* numpy: ``numpy_lstm.py``, a batched NumPy LSTM.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import numpy_lstm

PEERS = ("torch", "onnxruntime", "numpy")


def available() -> dict[str, str | None]:
    """Version of each optional peer library, or None when it is not installed."""
    versions: dict[str, str | None] = {"numpy": np.__version__}
    for name in ("torch", "onnxruntime"):
        if importlib.util.find_spec(name) is None or \
                (name == "onnxruntime" and importlib.util.find_spec("onnx") is None):
            versions[name] = None
            continue
        module = __import__(name)
        versions[name] = module.__version__
    return versions


@dataclass
class Contestant:
    """One library on one case: ``run()`` is timed, ``result()`` is checked."""

    name: str
    run: Callable[[], Any]
    result: Callable[[], dict[str, np.ndarray]]
    note: str = ""
    last: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# pylstm
# ---------------------------------------------------------------------------
def pylstm_forward(layer, x, lengths=None, name="pylstm") -> Contestant:
    last: dict[str, Any] = {}

    def run():
        last["out"], _ = layer(x, lengths=lengths)

    return Contestant(name, run, lambda: {"out": last["out"]})


def pylstm_step(layer, x_t) -> Contestant:
    state = layer.initial_state(x_t.shape[0])
    last: dict[str, Any] = {"state": state}

    def run():
        last["out"], last["state"] = layer.step(x_t, last["state"])

    return Contestant("pylstm", run, lambda: {"out": last["out"]})


def pylstm_train(layer, x, grad_out, optimizer: str | None) -> Contestant:
    """forward_train + backward, plus an Adam step on ``flat_parameters`` when asked.

    ``optimizer`` is None, "pylstm" (``pylstm._optimizers.Adam``) or "bench"
    (the vectorised Adam of ``numpy_lstm.py``).
    """
    last: dict[str, Any] = {}
    flat = layer.flat_parameters
    update: Callable[[np.ndarray], None] | None = None
    if optimizer == "pylstm":
        from pylstm._optimizers import Adam
        adam = Adam([flat.size], flat.dtype, learning_rate_init=1e-3)
        update = lambda grad: adam.step([flat], [grad])  # noqa: E731
    elif optimizer == "bench":
        adam = numpy_lstm.Adam(flat.size, flat.dtype)
        update = lambda grad: adam.step(flat, grad)  # noqa: E731

    def run():
        out, _, cache = layer.forward_train(x)
        grads = layer.backward(cache, grad_out)
        if update is not None:
            update(grads.flat)
        last.update(out=out, grad=grads.flat, dx=grads.input)

    return Contestant("pylstm", run, lambda: dict(last))


# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------
def _torch_module(layer):
    import torch
    dtype = torch.float64 if layer.dtype == np.float64 else torch.float32
    module = torch.nn.LSTM(layer.input_size, layer.hidden_size, layer.num_layers,
                           bidirectional=layer.bidirectional, batch_first=True, dtype=dtype)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return module


def torch_forward(layer, x, lengths=None) -> Contestant:
    """nn.LSTM inference; with lengths, through pack_padded_sequence / pad_packed_sequence."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    module = _torch_module(layer).eval()
    xt = torch.from_numpy(x)
    time = x.shape[1]
    last: dict[str, Any] = {}

    def run():
        with torch.inference_mode():
            if lengths is None:
                out, _ = module(xt)
            else:
                packed = pack_padded_sequence(xt, lengths, batch_first=True,
                                              enforce_sorted=False)
                out, _ = pad_packed_sequence(module(packed)[0], batch_first=True,
                                             total_length=time)
        last["out"] = out

    return Contestant("torch", run, lambda: {"out": last["out"].numpy()})


def torch_step(layer, x_t) -> Contestant:
    """nn.LSTMCell with the layer's weights, state carried from call to call."""
    import torch
    weights = layer.state_dict()
    cell = torch.nn.LSTMCell(layer.input_size, layer.hidden_size,
                             dtype=torch.float64 if layer.dtype == np.float64 else torch.float32)
    cell.load_state_dict({name: torch.from_numpy(weights[f"{name}_l0"])
                          for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    xt = torch.from_numpy(x_t)
    zeros = torch.zeros(x_t.shape[0], layer.hidden_size, dtype=xt.dtype)
    last: dict[str, Any] = {"state": (zeros, zeros.clone())}

    def run():
        with torch.inference_mode():
            last["state"] = cell(xt, last["state"])

    return Contestant("torch", run, lambda: {"out": last["state"][0].numpy()},
                      note="nn.LSTMCell")


def torch_train(layer, x, grad_out, optimizer: bool) -> Contestant:
    """Forward + backward (dL/dx too, as pylstm always computes it), plus torch.optim.Adam."""
    import torch
    module = _torch_module(layer).train()
    params = list(module.parameters())
    adam = torch.optim.Adam(params, lr=1e-3) if optimizer else None
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    gt = torch.from_numpy(grad_out)
    last: dict[str, Any] = {}

    def run():
        for p in params:
            p.grad = None
        xt.grad = None
        out, _ = module(xt)
        out.backward(gt)
        if adam is not None:
            adam.step()
        last["out"] = out

    def result():
        return {"out": last["out"].detach().numpy(),
                "grad": np.concatenate([p.grad.numpy().ravel() for p in params]),
                "dx": xt.grad.numpy()}

    return Contestant("torch", run, result)


# ---------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------
# ONNX orders the gates (i, o, f, c); torch and pylstm (i, f, g, o).
_ONNX_GATE_ORDER = (0, 3, 1, 2)


def _onnx_gates(weight: np.ndarray) -> np.ndarray:
    """Reorder the 4H leading axis of a torch weight or bias into ONNX's gate order."""
    blocks = np.split(weight, 4, axis=0)
    return np.concatenate([blocks[k] for k in _ONNX_GATE_ORDER], axis=0)


def onnx_lstm_model(layer, step: bool = False, with_lengths: bool = False) -> bytes:
    """Serialised ONNX model of ``layer`` (unidirectional or bidirectional, any depth).

    Sequence graph: X (B, T, I) -> [Transpose -> LSTM -> Transpose -> Reshape] per
    layer -> Y (B, T, D * H); optional input ``L`` (B,) int32 sequence lengths.
    Step graph (one layer): X (1, B, I), H0, C0 (1, B, H) -> Y_h, Y_c (1, B, H).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    elem = TensorProto.DOUBLE if layer.dtype == np.float64 else TensorProto.FLOAT
    H, D = layer.hidden_size, layer.num_directions
    weights = layer.state_dict()
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("X", elem, ["batch", "time", layer.input_size])]
    if step:
        inputs = [helper.make_tensor_value_info("X", elem, [1, "batch", layer.input_size]),
                  helper.make_tensor_value_info("H0", elem, [1, "batch", H]),
                  helper.make_tensor_value_info("C0", elem, [1, "batch", H])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, ["batch"]))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merge_shape"))
    current = "X"
    for k in range(layer.num_layers):
        suffixes = [f"l{k}", f"l{k}_reverse"][:D]
        W = np.stack([_onnx_gates(weights[f"weight_ih_{s}"]) for s in suffixes])   # (D, 4H, I)
        R = np.stack([_onnx_gates(weights[f"weight_hh_{s}"]) for s in suffixes])   # (D, 4H, H)
        Bias = np.stack([np.concatenate([_onnx_gates(weights[f"bias_ih_{s}"]),
                                         _onnx_gates(weights[f"bias_hh_{s}"])])
                         for s in suffixes])                                        # (D, 8H)
        for name, value in (("W", W), ("R", R), ("B", Bias)):
            inits.append(numpy_helper.from_array(value, f"{name}{k}"))
        direction = "bidirectional" if D == 2 else "forward"
        if step:
            nodes.append(helper.make_node(
                "LSTM", ["X", "W0", "R0", "B0", "", "H0", "C0"], ["", "Y_h", "Y_c"],
                hidden_size=H, direction=direction))
            outputs = [helper.make_tensor_value_info(n, elem, [1, "batch", H])
                       for n in ("Y_h", "Y_c")]
            break
        nodes.append(helper.make_node("Transpose", [current], [f"x_tbi{k}"], perm=[1, 0, 2]))
        lstm_inputs = [f"x_tbi{k}", f"W{k}", f"R{k}", f"B{k}"] + (["L"] if with_lengths else [])
        nodes.append(helper.make_node("LSTM", lstm_inputs, [f"y_tdbh{k}"], hidden_size=H,
                                      direction=direction))
        nodes.append(helper.make_node("Transpose", [f"y_tdbh{k}"], [f"y_btdh{k}"],
                                      perm=[2, 0, 1, 3]))
        current = "Y" if k == layer.num_layers - 1 else f"y_btd{k}"
        nodes.append(helper.make_node("Reshape", [f"y_btdh{k}", "merge_shape"], [current]))
        outputs = [helper.make_tensor_value_info("Y", elem, ["batch", "time", D * H])]
    graph = helper.make_graph(nodes, "pylstm_bench", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_session(model: bytes, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.log_severity_level = 4  # failures are reported in the table instead
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_forward(layer, x, threads: int, lengths=None) -> Contestant:
    session = _ort_session(onnx_lstm_model(layer, with_lengths=lengths is not None), threads)
    feed = {"X": x}
    if lengths is not None:
        feed["L"] = np.asarray(lengths, np.int32)
    last: dict[str, Any] = {}

    def run():
        last["out"] = session.run(["Y"], feed)[0]

    return Contestant("onnxruntime", run, lambda: {"out": last["out"]})


def ort_step(layer, x_t, threads: int) -> Contestant:
    session = _ort_session(onnx_lstm_model(layer, step=True), threads)
    zeros = np.zeros((1, x_t.shape[0], layer.hidden_size), layer.dtype)
    x_1bi = x_t[None]
    last: dict[str, Any] = {"state": (zeros, zeros.copy())}

    def run():
        h, c = last["state"]
        last["state"] = session.run(["Y_h", "Y_c"], {"X": x_1bi, "H0": h, "C0": c})

    return Contestant("onnxruntime", run, lambda: {"out": last["state"][0][0]},
                      note="LSTM node, T=1")


# ---------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------
def numpy_forward(layer, x, lengths=None) -> Contestant:
    params = layer.state_dict()
    last: dict[str, Any] = {}

    def run():
        last["out"] = numpy_lstm.forward(params, x, hidden_size=layer.hidden_size,
                                         num_layers=layer.num_layers,
                                         bidirectional=layer.bidirectional, lengths=lengths)

    return Contestant("numpy", run, lambda: {"out": last["out"]},
                      note="masked: costs the padded batch" if lengths is not None else "")


def numpy_step(layer, x_t) -> Contestant:
    params = layer.state_dict()
    zeros = np.zeros((x_t.shape[0], layer.hidden_size), layer.dtype)
    last: dict[str, Any] = {"state": (zeros, zeros.copy())}

    def run():
        last["state"] = numpy_lstm.step(params, x_t, *last["state"], layer.hidden_size)

    return Contestant("numpy", run, lambda: {"out": last["state"][0]})


def numpy_train(layer, x, grad_out, optimizer: bool) -> Contestant:
    params = layer.state_dict()
    flat = np.concatenate([v.ravel() for v in params.values()])
    # params become views into one flat vector, so the optimizer updates them all at once
    start = 0
    for name, value in params.items():
        params[name] = flat[start:start + value.size].reshape(value.shape)
        start += value.size
    adam = numpy_lstm.Adam(flat.size, flat.dtype) if optimizer else None
    last: dict[str, Any] = {}

    def run():
        out, grad, dx = numpy_lstm.forward_backward(params, x, grad_out,
                                                    hidden_size=layer.hidden_size)
        if adam is not None:
            adam.step(flat, grad)
        last.update(out=out, grad=grad, dx=dx)

    return Contestant("numpy", run, lambda: dict(last))
