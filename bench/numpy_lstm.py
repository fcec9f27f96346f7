"""The NumPy peer of the benchmark: an LSTM written the way one would in plain NumPy.

Vectorised over the batch, one Python iteration per time step: the input
projection of all steps is one matrix product, each step adds one recurrent
product and a few element-wise NumPy calls. This is the baseline a user gets
without a compiled kernel (``tests/reference.py`` is the slow, per-sequence
oracle; this one is meant to be reasonably fast). Parameters carry torch's
names and shapes; gate order (i, f, g, o). Everything runs in the dtype of
the parameters.

Variable lengths are handled by masking: every sequence runs all T steps and
keeps its state once past its end, so the cost is that of the padded batch.
"""
from __future__ import annotations

import math

import numpy as np


def _sigmoid(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = 1 / (1 + exp(-z)), in place on ``out`` (may be ``z``)."""
    np.negative(z, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def _cell(gates_bt4h: np.ndarray, cell: np.ndarray, hidden_size: int):
    """Activate a step's pre-activations (B, 4H) in place; return (i, f, g, o, new cell)."""
    H = hidden_size
    i, f, g, o = (gates_bt4h[:, k * H:(k + 1) * H] for k in range(4))
    _sigmoid(gates_bt4h[:, :2 * H], gates_bt4h[:, :2 * H])   # i, f
    np.tanh(g, out=g)
    _sigmoid(o, o)
    new_cell = f * cell
    new_cell += i * g
    return i, f, g, o, new_cell


def forward(params: dict, x: np.ndarray, *, hidden_size: int, num_layers: int = 1,
            bidirectional: bool = False, lengths: np.ndarray | None = None) -> np.ndarray:
    """Inference over a batch-first x (B, T, I); returns out (B, T, D * H), zero past lengths."""
    batch, time, _ = x.shape
    H, D = hidden_size, 2 if bidirectional else 1
    dtype = x.dtype
    live = None if lengths is None else (np.arange(time)[:, None] < lengths[None, :])  # (T, B)
    layer_input = x
    for layer in range(num_layers):
        out = np.zeros((batch, time, D * H), dtype)
        for direction in range(D):
            suffix = f"l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = params[f"weight_ih_{suffix}"], params[f"weight_hh_{suffix}"]
            bias = params[f"bias_ih_{suffix}"] + params[f"bias_hh_{suffix}"]
            # xw[b, t] = W_ih @ x[b, t] + bias, all steps in one product: (B, T, 4H)
            xw = layer_input @ w_ih.T
            xw += bias
            hidden = np.zeros((batch, H), dtype)
            cell = np.zeros((batch, H), dtype)
            w_hh_t = np.ascontiguousarray(w_hh.T)
            steps = range(time - 1, -1, -1) if direction else range(time)
            for t in steps:
                gates = xw[:, t] + hidden @ w_hh_t                  # (B, 4H)
                _, _, _, o, new_cell = _cell(gates, cell, H)
                new_hidden = o * np.tanh(new_cell)
                if live is None:
                    hidden, cell = new_hidden, new_cell
                else:
                    mask = live[t][:, None]
                    hidden = np.where(mask, new_hidden, hidden)
                    cell = np.where(mask, new_cell, cell)
                    new_hidden = np.where(mask, new_hidden, 0)
                out[:, t, direction * H:(direction + 1) * H] = new_hidden
        layer_input = out
    return layer_input


def step(params: dict, x_t: np.ndarray, hidden: np.ndarray, cell: np.ndarray,
         hidden_size: int):
    """One step of a single layer: x_t (B, I), hidden and cell (B, H) -> (hidden, cell)."""
    gates = x_t @ params["weight_ih_l0"].T
    gates += hidden @ params["weight_hh_l0"].T
    gates += params["bias_ih_l0"]
    gates += params["bias_hh_l0"]
    _, _, _, o, new_cell = _cell(gates, cell, hidden_size)
    return o * np.tanh(new_cell), new_cell


def forward_backward(params: dict, x: np.ndarray, grad_out: np.ndarray, *, hidden_size: int):
    """Forward and backpropagation through time, one unidirectional layer, no lengths.

    Returns (out (B, T, H), flat gradient in torch's parameter order, dL/dx (B, T, I)).
    """
    batch, time, input_size = x.shape
    H = hidden_size
    dtype = x.dtype
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    bias = params["bias_ih_l0"] + params["bias_hh_l0"]
    x_tbi = np.ascontiguousarray(x.transpose(1, 0, 2))               # time-major copies
    # acts[t] holds the activated gates (i, f, g, o) of step t, later their gradients.
    acts = (x_tbi.reshape(-1, input_size) @ w_ih.T).reshape(time, batch, 4 * H)
    acts += bias
    hidden_prev = np.zeros((time, batch, H), dtype)                   # h_{t-1}
    cell_prev = np.zeros((time, batch, H), dtype)                     # c_{t-1}
    tanh_cell = np.empty((time, batch, H), dtype)
    out_tbh = np.empty((time, batch, H), dtype)
    hidden = np.zeros((batch, H), dtype)
    cell = np.zeros((batch, H), dtype)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    for t in range(time):                                             # [F1]..[F4]
        hidden_prev[t] = hidden
        cell_prev[t] = cell
        acts[t] += hidden @ w_hh_t
        _, _, _, o, cell = _cell(acts[t], cell, H)
        np.tanh(cell, out=tanh_cell[t])
        hidden = out_tbh[t]
        np.multiply(o, tanh_cell[t], out=hidden)

    grad_out_tbh = grad_out.transpose(1, 0, 2)
    d_hidden = np.zeros((batch, H), dtype)
    d_cell = np.zeros((batch, H), dtype)
    for t in range(time - 1, -1, -1):                                 # [B4]..[B1]
        gates = acts[t]
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        d_hidden += grad_out_tbh[t]
        tc = tanh_cell[t]
        d_o = d_hidden * tc                                           # h = o * tanh(c)
        d_cell += d_hidden * o * (1 - tc * tc)
        d_i = d_cell * g                                              # c = f c_prev + i g
        d_f = d_cell * cell_prev[t]
        d_g = d_cell * i
        d_cell *= f
        # pre-activation gradients overwrite the activated gates of step t
        gates[:, :H] = d_i * i * (1 - i)
        gates[:, H:2 * H] = d_f * f * (1 - f)
        gates[:, 2 * H:3 * H] = d_g * (1 - g * g)
        gates[:, 3 * H:] = d_o * o * (1 - o)
        d_hidden = gates @ w_hh                                       # (B, 4H) @ (4H, H)
    d_gates = acts.reshape(-1, 4 * H)
    d_w_ih = d_gates.T @ x_tbi.reshape(-1, input_size)
    d_w_hh = d_gates.T @ hidden_prev.reshape(-1, H)
    d_bias = d_gates.sum(axis=0)
    d_x = (d_gates @ w_ih).reshape(time, batch, input_size).transpose(1, 0, 2)
    flat = np.concatenate([d_w_ih.ravel(), d_w_hh.ravel(), d_bias, d_bias])
    return out_tbh.transpose(1, 0, 2), flat, d_x


class Adam:
    """Torch's Adam on one flat vector, in place, vectorised: the NumPy peer's optimizer step."""

    def __init__(self, size: int, dtype, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, (self.beta_1, self.beta_2), self.eps = lr, betas, eps
        self.t = 0
        self.first = np.zeros(size, dtype)
        self.second = np.zeros(size, dtype)
        self.work = np.zeros(size, dtype)

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        b1, b2, work = self.beta_1, self.beta_2, self.work
        self.first *= b1                                              # m = b1 m + (1 - b1) g
        np.multiply(grad, 1 - b1, out=work)
        self.first += work
        self.second *= b2                                             # v = b2 v + (1 - b2) g^2
        np.multiply(grad, grad, out=work)
        work *= 1 - b2
        self.second += work
        # param -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
        np.sqrt(self.second, out=work)
        work *= 1 / math.sqrt(1 - b2 ** self.t)
        work += self.eps
        np.divide(self.first, work, out=work)
        work *= self.lr / (1 - b1 ** self.t)
        param -= work
