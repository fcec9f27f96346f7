"""Memory (issue 6): no growth over repeated inference, and sizes too large fail before allocating.

Both kinds of test run in a child process: the resident-memory figures are
then those of a fresh interpreter, and the size tests can cap the child's
address space (RLIMIT_AS), so that "raises before allocating" is checked
for real: an implementation that allocated first would hit the cap and raise
MemoryError instead, or crash, never succeed by luck.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pylstm

CALLS = 10_000
MAX_GROWTH = 1 << 20          # bytes of resident memory over CALLS calls
HEADROOM = 1 << 30            # address space a size-limit child may add to what it has


def run_child(code, timeout=300):
    """Run ``code`` in a fresh interpreter importing this pylstm; its last output line, as JSON."""
    env = dict(os.environ)
    package_root = str(Path(pylstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"child exited with {result.returncode}"
        f"{' (killed by a signal: a crash)' if result.returncode < 0 else ''}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# Repeated inference does not grow resident memory
# --------------------------------------------------------------------------
RSS_CHILD = """
import gc, json, os, warnings
import numpy as np
import pylstm

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

rng = np.random.default_rng(0)
kind = {kind!r}
if kind == "__call__":
    lstm = pylstm.LSTM(6, 32, num_layers=2, bidirectional=True, random_state=0)
    x = rng.standard_normal((8, 20, 6)).astype(np.float32)
    lengths = rng.integers(1, 21, 8)
    call = lambda: lstm(x, lengths=lengths)
elif kind == "__call__ fast path":
    lstm = pylstm.LSTM(6, 32, num_layers=2, bidirectional=True, proj_size=8, random_state=0)
    x = rng.standard_normal((8, 20, 6)).astype(np.float32)
    state = tuple(rng.standard_normal(a.shape).astype(np.float32) for a in lstm.initial_state(8))
    call = lambda: lstm(x, state)
elif kind == "step":
    lstm = pylstm.LSTM(6, 32, num_layers=2, proj_size=8, random_state=0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    state = lstm.initial_state(5)
    call = lambda: lstm.step(x, state)
else:
    from pylstm import LSTMClassifier
    X = rng.standard_normal((40, 10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LSTMClassifier(hidden_size=16, max_iter=2, random_state=0).fit(X, X[:, 0, 0] > 0)
    batch = X[:8]
    call = lambda: model.predict(batch)

for _ in range(500):       # warm up: caches, allocator pools, lazy imports
    call()
gc.collect()
before = rss()
for _ in range({calls}):
    call()
gc.collect()
print(json.dumps({{"growth": rss() - before, "rss": before}}))
"""


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason=(
    "under AddressSanitizer freed memory sits in its quarantine, so resident memory grows; "
    "there, heap errors are ASan's to find"))
@pytest.mark.parametrize("kind", ["__call__", "__call__ fast path", "step", "predict"])
def test_repeated_inference_does_not_grow_memory(kind, capsys):
    if kind == "predict":
        pytest.importorskip("sklearn")
    result = run_child(RSS_CHILD.format(kind=kind, calls=CALLS))
    with capsys.disabled():
        print(f"\nresident memory growth over {CALLS} {kind} calls: {result['growth']} bytes "
              f"(from {result['rss'] / 2**20:.1f} MiB)")
    assert result["growth"] < MAX_GROWTH


@pytest.mark.parametrize("path", ["fast", "general"])
def test_inference_memory_does_not_grow_with_sequence_length(path):
    """Peak extra memory of one call at T = 3000 within 10% of T = 100 (issue 4's
    target), through the sequence fast path and the general one (lengths given).

    At batch 32 both lengths span whole 64-step chunks. tracemalloc sees NumPy's
    arrays and the kernel's workspaces; the first assertion checks that it does,
    so the comparison cannot pass by measuring nothing.
    """
    import gc
    import tracemalloc

    import numpy as np
    batch, hidden = 32, 32
    lstm = pylstm.LSTM(8, hidden, bidirectional=True, random_state=0)

    def extra(steps):
        x = np.random.default_rng(steps).standard_normal((batch, steps, 8)).astype(np.float32)
        lengths = None if path == "fast" else np.full(batch, steps)
        lstm(x[:, :10], lengths=None if lengths is None else lengths.clip(max=10))  # weights cached
        gc.collect()
        tracemalloc.start()
        try:
            out, (h_n, c_n) = lstm(x, lengths=lengths)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak - out.nbytes - h_n.nbytes - c_n.nbytes

    short, long = extra(100), extra(3000)
    gate_workspace = 64 * batch * 4 * hidden * 4   # one chunk's gates, float32
    assert short >= gate_workspace, (short, gate_workspace)
    assert long <= 1.1 * short, (short, long)


# --------------------------------------------------------------------------
# Sizes beyond BLAS's 32-bit dimensions or the machine's memory
# --------------------------------------------------------------------------
LIMITED_CHILD = """
import json, resource
import numpy as np
import pylstm

def address_space():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

# From here on the process may map at most HEADROOM more bytes.
limit = address_space() + {headroom}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    {statement}
except Exception as exc:
    print(json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
else:
    print(json.dumps({{"error": None, "message": ""}}))
"""


def outcome_of(statement):
    """(exception name or None, message) of ``statement`` in a child with capped address space."""
    result = run_child(LIMITED_CHILD.format(headroom=HEADROOM, statement=statement))
    return result["error"], result["message"]


def assert_refused(statement, pattern):
    import re
    error, message = outcome_of(statement)
    assert error == "ValueError", f"{statement}\n-> {error}: {message}"
    assert re.search(pattern, message), f"{statement}\n-> {message!r} does not match {pattern!r}"


BLAS = r"2\*\*31"


def test_batch_times_gates_beyond_blas_is_refused():
    # batch * 4 * hidden_size = 2**32; the 4 MiB input itself is fine
    assert_refused("pylstm.LSTM(1, 1024)(np.broadcast_to(np.float32(0), (2**20, 1, 1)))", BLAS)


def test_terabytes_described_by_a_broadcast_view_are_refused():
    # refused before any conversion: batch * time already exceeds BLAS's sizes
    assert_refused("pylstm.LSTM(1, 4)(np.broadcast_to(np.float64(0), (2**20, 2**20, 1)))",
                   "memory|BLAS")
    assert_refused("pylstm.LSTM(1, 4).step(np.broadcast_to(np.float64(0), (2**40, 1)))",
                   "memory")
    assert_refused("setattr(pylstm.LSTM(1, 4), 'flat_parameters', "
                   "np.broadcast_to(np.float64(0), (2**38,)))", "memory")


def test_absurd_layer_sizes_are_refused():
    assert_refused("pylstm.LSTM(1, 10**6)", BLAS)
    assert_refused("pylstm.LSTM(10**12, 4)", BLAS)
    assert_refused("pylstm.LSTM(2**29, 1)", BLAS)


@pytest.mark.parametrize("method", ["__call__", "forward_train"])
def test_batch_times_steps_beyond_blas_is_refused_before_converting(method):
    assert_refused(f"getattr(pylstm.LSTM(1, 4), {method!r})("
                   "np.broadcast_to(np.float32(0), (2**16, 2**15 + 1, 1)))", BLAS)


def test_step_batch_times_gates_beyond_blas_is_refused():
    assert_refused("pylstm.LSTM(1, 1024).step(np.broadcast_to(np.float32(0), (2**20, 1)))",
                   BLAS)


@pytest.mark.parametrize("statement", [
    "pylstm.LSTM(16000, 16000, num_layers=4, bidirectional=True)",
    "pylstm.LSTM(1000, 1000, num_layers=10**4)",
])
def test_parameters_beyond_memory_are_refused_before_allocating(statement):
    assert_refused(statement, "memory")


def test_initial_state_beyond_memory_is_refused():
    assert_refused("pylstm.LSTM(1, 4).initial_state(2**40)", f"memory|{BLAS}")
