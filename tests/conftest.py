"""Fixtures shared by the tests: seeded random numbers and torch as a second oracle."""
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, yet different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


class TorchOracle:
    """Runs ``torch.nn.LSTM`` on NumPy inputs and hands back NumPy results.

    Parameters
    ----------
    torch : module
        The imported torch package.
    """

    def __init__(self, torch):
        self.torch = torch

    def module(self, params, *, input_size, hidden_size, num_layers, bidirectional, proj_size=0, dtype=np.float64):
        """A batch-first ``nn.LSTM`` holding ``params``.

        Parameters
        ----------
        params : dict of str to array_like
            Torch's names and shapes.
        input_size, hidden_size, num_layers : int
        bidirectional : bool
        proj_size : int
        dtype : {numpy.float32, numpy.float64}

        Returns
        -------
        torch.nn.LSTM
        """
        torch = self.torch
        torch_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
        module = torch.nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            proj_size=proj_size,
            batch_first=True,
            dtype=torch_dtype,
        )
        with torch.no_grad():
            for name, value in params.items():
                getattr(module, name).copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
        return module

    def run(self, module, x, h0=None, c0=None, lengths=None, grad_out=None, grad_h_n=None, grad_c_n=None):
        """Forward ``module`` and backpropagate ``sum(grad_out * out) + sum(grad_h_n * h_n) + sum(grad_c_n * c_n)``.

        ``lengths`` goes through ``pack_padded_sequence(enforce_sorted=False)``
        and ``pad_packed_sequence(total_length=time)``. Missing initial states
        are zeros that still get gradients; missing output gradients are zeros.

        Returns
        -------
        dict
            ``out``, ``h_n``, ``c_n``, ``grad_x``, ``grad_h0``, ``grad_c0``
            and ``grad_params`` (dict by torch name), all NumPy arrays.
        """
        torch = self.torch
        dtype = next(module.parameters()).dtype
        num_states = module.num_layers * (2 if module.bidirectional else 1)
        batch, steps, _ = np.shape(x)
        output_size = module.proj_size or module.hidden_size

        def tensor(value, shape):
            value = np.zeros(shape) if value is None else np.asarray(value, dtype=np.float64)
            return torch.tensor(value, dtype=dtype, requires_grad=True)

        x_tensor = tensor(x, np.shape(x))
        h0_tensor = tensor(h0, (num_states, batch, output_size))
        c0_tensor = tensor(c0, (num_states, batch, module.hidden_size))
        module.zero_grad()
        if lengths is None:
            out, (h_n, c_n) = module(x_tensor, (h0_tensor, c0_tensor))
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x_tensor, torch.as_tensor(np.asarray(lengths), dtype=torch.int64), batch_first=True, enforce_sorted=False
            )
            packed_out, (h_n, c_n) = module(packed, (h0_tensor, c0_tensor))
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        loss = 0.0 * out.sum()  # keeps the graph alive when every gradient is zero
        for value, grad in ((out, grad_out), (h_n, grad_h_n), (c_n, grad_c_n)):
            if grad is not None:
                loss = loss + (value * torch.tensor(np.asarray(grad, dtype=np.float64), dtype=dtype)).sum()
        loss.backward()

        def numpy(value):
            return value.detach().numpy().astype(np.float64)

        return dict(
            out=numpy(out),
            h_n=numpy(h_n),
            c_n=numpy(c_n),
            grad_x=numpy(x_tensor.grad),
            grad_h0=numpy(h0_tensor.grad),
            grad_c0=numpy(c0_tensor.grad),
            grad_params={name: numpy(value.grad) for name, value in module.named_parameters()},
        )


@pytest.fixture
def torch_oracle():
    """A ``TorchOracle``; skips the test when torch is not installed."""
    torch = pytest.importorskip("torch")
    return TorchOracle(torch)
