"""ONNX export of a :class:`~pylstm.LSTM` or a fitted estimator: :func:`to_onnx`.

Needs the optional ``onnx`` package (``pip install 'pylstm[onnx]'``), imported
on the first call only, so ``import pylstm`` never loads it.

The graph (ONNX opset 17, IR version 8) takes what pylstm takes and returns
what it returns, with the batch and time axes dynamic:

* inputs: ``input`` (batch, time, input_size) float32, and with
  ``with_lengths=True`` also ``lengths`` (batch,) int64, each in [1, time], with
  pylstm's meaning (outputs are zero past a sequence's end, final states are
  those at its last step, the reverse direction starts there);
* a layer returns ``output`` (batch, time, D * P), ``h_n`` (num_layers * D,
  batch, P) and ``c_n`` (num_layers * D, batch, hidden_size);
* a classifier returns ``label`` (batch,) holding ``classes_`` values and
  ``probabilities`` (batch, n_classes), columns in the order of ``classes_``;
* a regressor returns ``predictions``, (batch,) for one output, else
  (batch, n_outputs).

Each layer without a projection is one ONNX ``LSTM`` node. ONNX's gate order
is (i, o, f, c) where torch's and pylstm's is (i, f, g, o), so the weight blocks
are reordered, and ONNX wants the two biases side by side, [W_b; R_b]. The
node runs time-major (``layout=0``; onnxruntime refuses ``layout=1``): the
input is transposed once, each layer's Y (time, D, batch, H) becomes
(time, batch, D * H) for the next, and the last is transposed back to
batch-first.

ONNX's ``LSTM`` has no projection. With ``proj_size > 0`` each layer direction
is instead a ``Scan`` over time whose body is one LSTM step with the
projection (``h = W_hr (o * tanh(c))``), still dynamic in batch and time; the
input projection of all steps is one MatMul before the Scan.

Weights of float64 models are rounded to float32: the graph is float32
throughout.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._io import _estimator_class_name
from ._layer import LSTM
from ._version import __version__

OPSET = 17
IR_VERSION = 8
# torch's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c).
_ONNX_GATE_ORDER = (0, 3, 1, 2)


def to_onnx(model: Any, path: str | os.PathLike | None = None, *,
            with_lengths: bool = False) -> Any:
    """Export a layer or a fitted estimator to ONNX.

    Parameters
    ----------
    model : pylstm.LSTM, pylstm.LSTMClassifier or pylstm.LSTMRegressor
        Estimators must be fitted.
    path : str, path-like or None, default=None
        If given, also write the model there (atomically, as model files).
    with_lengths : bool, default=False
        Add a second input ``lengths`` of shape (batch,) and dtype int64, the
        valid steps of each sequence, as pylstm's ``lengths`` argument.

    Returns
    -------
    onnx.ModelProto
        Inputs ``input`` (batch, time, features) float32 [and ``lengths``];
        outputs ``output``, ``h_n``, ``c_n`` for a layer, ``label`` and
        ``probabilities`` for a classifier, ``predictions`` for a regressor:
        per sequence, or with ``output="sequence"`` per step (shapes (batch,
        time, ...), as the estimator's predict on a padded array).

    Notes
    -----
    Layers without a projection become ONNX ``LSTM`` nodes; with ``proj_size``,
    which that op cannot express, each layer direction becomes a ``Scan`` over
    time (see the module docstring). Both keep batch and time dynamic.

    Raises
    ------
    ImportError
        If the ``onnx`` package is not installed.
    TypeError
        For another kind of object.
    NotImplementedError
        For an ``LSTMForecaster`` (export its ``regressor_``).
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("pylstm.to_onnx needs the onnx package: "
                          "pip install 'pylstm[onnx]'") from exc
    kind = _estimator_class_name(model)
    if type(model).__name__ == "LSTMForecaster" and type(model).__module__ == "pylstm._forecaster":
        raise NotImplementedError(
            "to_onnx does not export an LSTMForecaster: its scaling, windowing and recursive "
            "loop live in Python; export its network, model.regressor_, which takes the "
            "scaled windows")
    if type(model) is not LSTM and kind is None:
        raise TypeError(f"to_onnx expects a pylstm.LSTM, LSTMClassifier or LSTMRegressor, "
                        f"got {type(model).__module__}.{type(model).__qualname__}")
    if kind is not None:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model)
    graph = _Graph(onnx)
    lstm = model if kind is None else model.lstm_
    graph.add_input("input", np.float32, ["batch", "time", lstm.input_size])
    lengths = None
    if with_lengths:
        graph.add_input("lengths", np.int64, ["batch"])
        lengths = "lengths"
    if kind is None:
        out, h_n, c_n = _lstm_nodes(graph, lstm, "input", lengths, need_sequence=True)
        P, H, LD = lstm.output_size, lstm.hidden_size, lstm.num_layers * lstm.num_directions
        graph.add_output(out, "output", np.float32,
                         ["batch", "time", lstm.num_directions * P])
        graph.add_output(graph.node("Concat", h_n, axis=0), "h_n", np.float32,
                         [LD, "batch", P])
        graph.add_output(graph.node("Concat", c_n, axis=0), "c_n", np.float32,
                         [LD, "batch", H])
        description = f"pylstm {lstm!r}"
    else:
        _estimator_nodes(graph, model, kind, lengths)
        description = f"pylstm {kind} on {lstm!r}"
    onnx_model = graph.model(description)
    onnx.checker.check_model(onnx_model)
    if path is not None:
        from ._io import atomic_write

        data = onnx_model.SerializeToString()
        atomic_write(path, lambda file: file.write(data))
    return onnx_model


# ============================================================================ graph pieces
def _lstm_nodes(graph: "_Graph", lstm: LSTM, x_btf: str, lengths: str | None,
                need_sequence: bool) -> tuple[str | None, list[str], list[str]]:
    """The LSTM stack on batch-first ``x_btf``.

    Returns the batch-first output sequence (batch, time, D * P) (None if not
    ``need_sequence``) and per layer its final states h (D, batch, P) and c (D, batch, H).
    """
    params = {name: value.astype(np.float32) for name, value in lstm.state_dict().items()}
    layer_input = graph.node("Transpose", [x_btf], perm=[1, 0, 2])        # (T, B, F)
    h_layers, c_layers = [], []
    for layer in range(lstm.num_layers):
        last = layer == lstm.num_layers - 1
        if lstm.proj_size:
            sequence, h_n, c_n = _scan_layer(graph, lstm, params, layer, layer_input, lengths)
        else:
            sequence, h_n, c_n = _onnx_lstm_layer(graph, lstm, params, layer, layer_input,
                                                   lengths, need_sequence or not last)
        h_layers.append(h_n)
        c_layers.append(c_n)
        layer_input = sequence                                             # (T, B, D*P)
    out = None
    if need_sequence:
        out = graph.node("Transpose", [layer_input], perm=[1, 0, 2])       # (B, T, D*P)
    return out, h_layers, c_layers


def _onnx_lstm_layer(graph: "_Graph", lstm: LSTM, params: dict[str, np.ndarray], layer: int,
                     x_tbf: str, lengths: str | None, need_sequence: bool):
    """One layer (both directions) as one ONNX LSTM node; returns Y (T, B, D*H), Y_h, Y_c."""
    H = lstm.hidden_size
    suffixes = [f"l{layer}" + ("_reverse" if direction else "")
                for direction in range(lstm.num_directions)]

    def reorder(weight: np.ndarray) -> np.ndarray:
        return np.concatenate([np.split(weight, 4, axis=0)[k] for k in _ONNX_GATE_ORDER])

    W = graph.constant(np.stack([reorder(params[f"weight_ih_{s}"]) for s in suffixes]),
                       f"W_l{layer}")                                      # (D, 4H, I)
    R = graph.constant(np.stack([reorder(params[f"weight_hh_{s}"]) for s in suffixes]),
                       f"R_l{layer}")                                      # (D, 4H, H)
    inputs = [x_tbf, W, R]
    if lstm.bias:
        inputs.append(graph.constant(np.stack([
            np.concatenate([reorder(params[f"bias_ih_{s}"]), reorder(params[f"bias_hh_{s}"])])
            for s in suffixes]), f"B_l{layer}"))                          # (D, 8H)
    else:
        inputs.append("")
    if lengths is not None:
        inputs.append(graph.int32_lengths(lengths))
    direction = "bidirectional" if lstm.bidirectional else "forward"
    y, y_h, y_c = graph.node("LSTM", inputs, outputs=3, hidden_size=H, direction=direction,
                             layout=0, drop=() if need_sequence else (0,))
    if not need_sequence:
        return None, y_h, y_c
    # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
    y = graph.node("Transpose", [y], perm=[0, 2, 1, 3])
    y = graph.node("Reshape", [y, graph.constant(np.array([0, 0, -1], np.int64))])
    return y, y_h, y_c


def _scan_layer(graph: "_Graph", lstm: LSTM, params: dict[str, np.ndarray], layer: int,
                x_tbf: str, lengths: str | None):
    """One layer with a projection: a Scan per direction; returns Y (T, B, D*P), h (D, B, P), c."""
    H, P = lstm.hidden_size, lstm.output_size
    mask = None
    if lengths is not None:
        mask = graph.step_mask(x_tbf, lengths)                             # (T, B, 1) bool
    zeros_h = graph.zeros_like_batch(x_tbf, P)                             # (B, P)
    zeros_c = graph.zeros_like_batch(x_tbf, H)                             # (B, H)
    sequences, finals_h, finals_c = [], [], []
    for direction in range(lstm.num_directions):
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        # x_proj = x @ W_ih.T + (b_ih + b_hh): all steps at once, (T, B, 4H)
        w_ih_t = graph.constant(np.ascontiguousarray(params[f"weight_ih_{suffix}"].T),
                                f"weight_ih_{suffix}_T")
        x_proj = graph.node("MatMul", [x_tbf, w_ih_t])
        if lstm.bias:
            bias = params[f"bias_ih_{suffix}"] + params[f"bias_hh_{suffix}"]
            x_proj = graph.node("Add", [x_proj, graph.constant(bias, f"bias_{suffix}")])
        body = _step_body(graph, params, suffix, H, P, masked=mask is not None)
        scan_inputs = [x_proj] + ([mask] if mask is not None else [])
        reverse = int(direction == 1)
        h_last, c_last, y = graph.node(
            "Scan", [zeros_h, zeros_c] + scan_inputs, outputs=3, body=body,
            num_scan_inputs=len(scan_inputs), scan_input_directions=[reverse] * len(scan_inputs),
            scan_output_directions=[reverse])
        sequences.append(y)                                                # (T, B, P)
        finals_h.append(graph.node("Unsqueeze", [h_last, graph.constant(np.array([0]))]))
        finals_c.append(graph.node("Unsqueeze", [c_last, graph.constant(np.array([0]))]))
    y = sequences[0] if len(sequences) == 1 else graph.node("Concat", sequences, axis=2)
    h = finals_h[0] if len(finals_h) == 1 else graph.node("Concat", finals_h, axis=0)
    c = finals_c[0] if len(finals_c) == 1 else graph.node("Concat", finals_c, axis=0)
    return y, h, c


def _step_body(graph: "_Graph", params: dict[str, np.ndarray], suffix: str, H: int, P: int,
               masked: bool) -> Any:
    """Scan body: one step of one direction, gate order (i, f, g, o) as torch.

    State (h (B, P), c (B, H)), scan inputs x_proj_t (B, 4H) [and alive_t (B, 1)];
    outputs the new state and y_t (B, P). Weights are read from the outer graph.
    """
    body = graph.subgraph(f"step_{suffix}")
    body.add_input("h", np.float32, ["batch", P])
    body.add_input("c", np.float32, ["batch", H])
    body.add_input("x_proj", np.float32, ["batch", 4 * H])
    if masked:
        body.add_input("alive", np.bool_, ["batch", 1])
    w_hh_t = graph.constant(np.ascontiguousarray(params[f"weight_hh_{suffix}"].T),
                            f"weight_hh_{suffix}_T")                       # (P, 4H)
    w_hr_t = graph.constant(np.ascontiguousarray(params[f"weight_hr_{suffix}"].T),
                            f"weight_hr_{suffix}_T")                       # (H, P)
    gates = body.node("Add", ["x_proj", body.node("MatMul", ["h", w_hh_t])])   # (B, 4H)
    gate_i, gate_f, gate_g, gate_o = body.node("Split", [gates], outputs=4, axis=1)
    gate_i = body.node("Sigmoid", [gate_i])
    gate_f = body.node("Sigmoid", [gate_f])
    gate_g = body.node("Tanh", [gate_g])
    gate_o = body.node("Sigmoid", [gate_o])
    # c = f * c + i * g;  h = (o * tanh(c)) @ W_hr.T
    cell = body.node("Add", [body.node("Mul", [gate_f, "c"]), body.node("Mul", [gate_i, gate_g])])
    hidden = body.node("MatMul", [body.node("Mul", [gate_o, body.node("Tanh", [cell])]), w_hr_t])
    if masked:
        # past a sequence's end the state stays, and the output is zero
        cell = body.node("Where", ["alive", cell, "c"])
        output = body.node("Where", ["alive", hidden, graph.constant(np.zeros((), np.float32))])
        hidden = body.node("Where", ["alive", hidden, "h"])
    else:
        output = hidden
    body.add_output(hidden, "h_out", np.float32, ["batch", P])
    body.add_output(cell, "c_out", np.float32, ["batch", H])
    body.add_output(output, "y", np.float32, ["batch", P])
    return body.graph()


def _estimator_nodes(graph: "_Graph", estimator: Any, kind: str, lengths: str | None) -> None:
    """LSTM, then the head, then softmax or nothing.

    output="last": the head reads the top layer's final states, outputs are
    per sequence. output="sequence": it reads every step's output (past a
    sequence's end that output is zero, so the head gives its intercept, as in
    pylstm), outputs are per step, with a "time" axis after "batch".
    """
    lstm = estimator.lstm_
    per_step = estimator.output == "sequence"
    sequence, h_layers, _ = _lstm_nodes(graph, lstm, "input", lengths, need_sequence=per_step)
    if per_step:
        features = sequence                                                # (B, T, D*P)
    else:
        # top layer's final states (D, B, P) -> (B, D, P) -> (B, D*P), directions side by side
        features = graph.node("Transpose", [h_layers[-1]], perm=[1, 0, 2])
        features = graph.node("Reshape", [features, graph.constant(np.array([0, -1], np.int64))])
    coef = graph.constant(np.asarray(estimator.head_coef_, np.float32), "head_coef")
    intercept = graph.constant(np.asarray(estimator.head_intercept_, np.float32),
                               "head_intercept")
    logits = graph.node("Add", [graph.node("MatMul", [features, coef]), intercept])
    n_outputs = estimator.head_intercept_.shape[0]
    axes = ["batch", "time"] if per_step else ["batch"]
    last = len(axes)                                                       # the output axis
    if kind == "LSTMClassifier":
        classes = np.asarray(estimator.classes_)
        if classes.dtype.kind in "OU":
            classes = np.array([str(label) for label in classes], dtype=object)
        index = graph.node("ArgMax", [logits], axis=last, keepdims=0)
        label = graph.node("Gather", [graph.constant(classes, "classes"), index], axis=0)
        graph.add_output(label, "label", classes.dtype, axes)
        graph.add_output(graph.node("Softmax", [logits], axis=last), "probabilities", np.float32,
                         axes + [n_outputs])
    else:
        if estimator.n_outputs_ == 1:
            predictions = graph.node("Squeeze", [logits, graph.constant(np.array([last]))])
            graph.add_output(predictions, "predictions", np.float32, axes)
        else:
            graph.add_output(logits, "predictions", np.float32, axes + [n_outputs])


# ============================================================================ builder
class _Graph:
    """A small ONNX graph builder: unique names, constants as initializers."""

    def __init__(self, onnx: Any, name: str = "pylstm", parent: "_Graph | None" = None) -> None:
        self.onnx = onnx
        self.name = name
        self.root = parent.root if parent is not None else self
        self.nodes: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.initializers: list[Any] = []
        self._cache: dict[str, str] = {}
        if parent is None:
            self._counter = 0

    def fresh(self, hint: str) -> str:
        root = self.root
        root._counter += 1
        return f"{hint}_{root._counter}"

    def _value_info(self, name: str, dtype: Any, shape: list[Any]) -> Any:
        helper = self.onnx.helper
        elem = (self.onnx.TensorProto.STRING if np.dtype(dtype).kind in "OU"
                else helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        return helper.make_tensor_value_info(name, elem, shape)

    def add_input(self, name: str, dtype: Any, shape: list[Any]) -> None:
        self.inputs.append(self._value_info(name, dtype, shape))

    def add_output(self, value: str, name: str, dtype: Any, shape: list[Any]) -> None:
        self.nodes.append(self.onnx.helper.make_node("Identity", [value], [name],
                                                     name=self.fresh("Identity")))
        self.outputs.append(self._value_info(name, dtype, shape))

    def constant(self, value: np.ndarray, hint: str = "const") -> str:
        """An initializer of the root graph (subgraphs see it from the outer scope)."""
        root = self.root
        value = np.asarray(value)
        name = root.fresh(hint)
        root.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, drop: tuple[int, ...] = (),
             **attributes: Any) -> Any:
        """Add a node; returns its output name, or a tuple of names if ``outputs`` > 1.

        Outputs listed in ``drop`` are left unnamed (ONNX's way to omit an optional output).
        """
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        node_outputs = ["" if k in drop else name for k, name in enumerate(names)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, node_outputs,
                                                     name=self.fresh(op), **attributes))
        return names[0] if outputs == 1 else tuple(names)

    def subgraph(self, name: str) -> "_Graph":
        return _Graph(self.onnx, name, parent=self)

    def graph(self) -> Any:
        return self.onnx.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                           self.initializers)

    def model(self, description: str) -> Any:
        helper = self.onnx.helper
        model = helper.make_model(self.graph(), producer_name="pylstm",
                                  producer_version=__version__, doc_string=description,
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        return model

    # -------------------------------------------------------------- shared helpers
    def int32_lengths(self, lengths: str) -> str:
        if "int32_lengths" not in self._cache:
            self._cache["int32_lengths"] = self.node(
                "Cast", [lengths], to=self.onnx.TensorProto.INT32)
        return self._cache["int32_lengths"]

    def step_mask(self, x_tbf: str, lengths: str) -> str:
        """alive[t, b, 0] = t < lengths[b], shape (T, B, 1)."""
        key = "mask"  # every layer has the same time and batch axes
        if key not in self._cache:
            steps = self.node("Gather", [self.node("Shape", [x_tbf]),
                                         self.constant(np.array(0, np.int64))], axis=0)
            time = self.node("Range", [self.constant(np.array(0, np.int64)), steps,
                                       self.constant(np.array(1, np.int64))])      # (T,)
            time = self.node("Unsqueeze", [time, self.constant(np.array([1]))])   # (T, 1)
            alive = self.node("Less", [time, lengths])                             # (T, B)
            self._cache[key] = self.node("Unsqueeze", [alive, self.constant(np.array([2]))])
        return self._cache[key]

    def zeros_like_batch(self, x_tbf: str, size: int) -> str:
        """Zeros of shape (B, size), B read from ``x_tbf`` (T, B, F)."""
        key = f"zeros_{size}"
        if key not in self._cache:
            batch = self.node("Slice", [self.node("Shape", [x_tbf]),
                                        self.constant(np.array([1])), self.constant(np.array([2]))])
            shape = self.node("Concat", [batch, self.constant(np.array([size]))], axis=0)
            self._cache[key] = self.node(
                "ConstantOfShape", [shape],
                value=self.onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
        return self._cache[key]

