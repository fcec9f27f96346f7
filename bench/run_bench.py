"""The benchmark suite: pylstm against torch, onnxruntime and NumPy, and against the machine.

Every case runs each library on the same weights (pylstm's ``state_dict``)
and the same input, checks the peers' outputs (and gradients) against
pylstm's first, then times them in one process, interleaved (each repeat runs
every library once, in a random order, so machine noise hits all alike),
at each requested thread count (the same count for every library). It reports
the median, the spread (IQR) and each peer's time divided by pylstm's (> 1:
pylstm is faster), plus the *floor*: the case's FLOPs divided by the
single-precision GEMM rate of scipy's BLAS on a large square product (the
best of samples taken before and after the cases; double precision for the
float64 case). Targets of issue 4 are printed as PASS/MISS; "lengths-mid"
passes when its time over pylstm's time on the padded batch is at most
1.1 x sum(lengths) / (B * T).

Then: inference peak extra memory at T=10,000 vs T=100, the time of
``import pylstm`` in a fresh interpreter, and whether outputs and gradients
are bitwise identical at 1 and 2 threads. Raw figures go to
``<out>/results.json``, the tables to ``<out>/results.md`` and, with
matplotlib, how time grows with T, B and H to ``<out>/scaling.png``.

    python bench/run_bench.py [--threads 1,2] [--repeats N] [--quick] [--out bench/results]
                              [--cases mid,large] [--minutes 9]

The run fits in ``--minutes`` (9 by default; under a minute with --quick):
repeats shrink when the machine is slow, and each row says how many samples it has.

Peers that are not installed are skipped, never faked. Timing never gates CI.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# OpenBLAS's idle threads (NumPy's, behind the reference contestant) busy-wait
# for about 2^28 cycles (~0.1 s) after each call, taking a core from whichever
# library runs next: measured at 2 threads, pylstm's deepbench-device took
# 11.3 ms right after a NumPy product against 1.4 ms alone. 2^4 cycles lets them
# sleep at once; it must be set before OpenBLAS loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Benchmark the tree this script lives in (built in place), unless pylstm is installed.
try:
    import pylstm
except ImportError:
    sys.path.insert(0, str(REPO_ROOT))
    import pylstm

import peers  # noqa: E402  (bench/ is on sys.path as the script's directory)
from peers import Contestant  # noqa: E402

LIBRARIES = ("pylstm",) + peers.PEERS


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    time: int
    batch: int
    input_size: int
    hidden_size: int
    kind: str = "infer"           # "step", "infer", "train" (fwd+bwd), "train-opt" (+ Adam)
    purpose: str = ""
    dtype: str = "float32"
    num_layers: int = 1
    bidirectional: bool = False
    lengths: bool = False         # lengths uniform in [T/2, T]

    @property
    def shape(self) -> str:
        extra = [self.dtype] if self.dtype != "float32" else []
        extra += [f"{self.num_layers} layers"] if self.num_layers > 1 else []
        extra += ["bidirectional"] if self.bidirectional else []
        extra += ["lengths"] if self.lengths else []
        core = f"(T={self.time}, B={self.batch}, I={self.input_size}, H={self.hidden_size})"
        return core + (" " + ", ".join(extra) if extra else "")


CASES = (
    Case("step", 1, 1, 32, 128, "step", "streaming inference: one step() with carried state"),
    Case("seq-small", 100, 1, 32, 128, purpose="latency of one request"),
    Case("deepbench-device", 150, 1, 256, 256, purpose="DeepBench's device inference shape"),
    Case("mid", 100, 32, 64, 256, purpose="batch inference"),
    Case("large", 50, 128, 512, 512, purpose="throughput"),
    Case("deepbench-train", 25, 64, 512, 512, "train", "DeepBench training shape, fwd+bwd"),
    Case("train-mid", 100, 32, 64, 256, "train-opt", "estimator training, fwd+bwd+Adam"),
    Case("float64-mid", 100, 32, 64, 256, purpose="the double path", dtype="float64"),
    Case("bidir2-mid", 100, 32, 64, 256, purpose="stacked/bidirectional overhead",
         num_layers=2, bidirectional=True),
    Case("lengths-mid", 100, 32, 64, 256, purpose="variable-length batch", lengths=True),
)


def case_lengths(case: Case) -> np.ndarray | None:
    if not case.lengths:
        return None
    rng = np.random.default_rng(1)
    return rng.integers(case.time // 2, case.time + 1, size=case.batch)


def case_flops(case: Case, lengths: np.ndarray | None = None) -> float:
    """forward = 2 * rows * 4H * (I_k + H) per layer-direction; fwd+bwd ~ 3x forward."""
    rows = case.time * case.batch if lengths is None else int(np.sum(lengths))
    directions = 2 if case.bidirectional else 1
    H = case.hidden_size
    total = 0.0
    for layer in range(case.num_layers):
        width = case.input_size if layer == 0 else directions * H
        total += directions * 2.0 * rows * 4 * H * (width + H)
    return total * (3 if case.kind.startswith("train") else 1)


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------
def pylstm_thread_mechanism() -> str:
    if hasattr(pylstm, "threads"):
        return "pylstm.threads(n)"
    if hasattr(pylstm, "set_num_threads"):
        return "pylstm.set_num_threads(n)"
    return "threadpoolctl (scipy's OpenBLAS)"


@contextlib.contextmanager
def thread_limit(threads: int):
    """The same thread count for every library (onnxruntime's is set per session)."""
    from threadpoolctl import threadpool_limits
    with contextlib.ExitStack() as stack:
        # every BLAS and OpenMP runtime in the process: scipy's and numpy's OpenBLAS, torch's OpenMP
        stack.enter_context(threadpool_limits(limits=threads))
        if hasattr(pylstm, "threads"):
            stack.enter_context(pylstm.threads(threads))
        elif hasattr(pylstm, "set_num_threads"):
            pylstm.set_num_threads(threads)
        if PEER_VERSIONS.get("torch"):
            import torch
            torch.set_num_threads(threads)
        yield


def gemm_rate(dtype, size: int, repeats: int) -> list[float]:
    """FLOP/s of scipy's BLAS on size x size x size products (one sample per repeat)."""
    from scipy.linalg import blas
    gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((size, size)).astype(dtype))
    b = np.asfortranarray(rng.standard_normal((size, size)).astype(dtype))
    c = np.asfortranarray(np.zeros((size, size), dtype))
    gemm(1.0, a, b, 0.0, c, overwrite_c=True)  # warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        gemm(1.0, a, b, 0.0, c, overwrite_c=True)
        rates.append(2.0 * size ** 3 / (time.perf_counter() - start))
    return rates


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
@dataclass
class Timing:
    status: str = "ok"            # "ok", "not installed", "unsupported: ...", "wrong: ..."
    note: str = ""
    inner: int = 0                # calls per sample
    samples: list[float] = field(default_factory=list)   # seconds per call

    @property
    def median(self) -> float:
        return float(np.median(self.samples)) if self.samples else math.nan

    @property
    def iqr(self) -> float:
        if not self.samples:
            return math.nan
        q25, q75 = np.percentile(self.samples, [25, 75])
        return float(q75 - q25)


@dataclass
class Budget:
    repeats: int          # at most this many samples per library
    min_repeats: int      # at least this many, whatever the budget
    seconds: float        # aim for a case to take about this long
    min_sample: float     # a sample repeats the call until it lasts this long
    warm_up: bool = True  # one untimed call per contestant before timing


# Pause before each sample (seconds): thread pools spin for a while after
# their work (OpenMP, onnxruntime, OpenBLAS) and would compete with the next library.
_SETTLE = 0.005


class Deadline:
    """Share what is left of a time limit among the measurements still to come."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def share(self, parts_left: int, cap: float) -> float:
        """Seconds for the next of ``parts_left`` measurements (<= 0 once time is up)."""
        return min(cap, (self.end - time.perf_counter()) / max(parts_left, 1))


def measure(contestants: list[Contestant], budget: Budget, first_runs: dict[str, float],
            seconds: float) -> dict[str, Timing]:
    """Interleaved medians: each repeat runs every contestant once, in a random order.

    ``first_runs`` holds the time of each contestant's first (checked) run. In a
    full run, contestants faster than 0.1 s get one more untimed call to warm
    up and size their samples. The number of repeats fits ``seconds``, within
    the budget's bounds; with no time left (a very busy machine) it drops to one.
    """
    timings = {c.name: Timing(note=c.note) for c in contestants}
    round_time = 0.0
    for c in contestants:
        once = first_runs[c.name]
        if budget.warm_up and once < 0.1:
            start = time.perf_counter()
            c.run()
            once = time.perf_counter() - start
        timings[c.name].inner = max(1, math.ceil(budget.min_sample / max(once, 1e-7)))
        round_time += once * timings[c.name].inner
    fewest = budget.min_repeats if seconds > 0 else 1
    repeats = int(min(budget.repeats, max(fewest, seconds // round_time)))
    # A fresh random order each repeat: with a rotating order every library
    # always follows the same other one, and inherits its spinning threads.
    order = np.random.default_rng(0)
    for r in range(repeats):
        for index in order.permutation(len(contestants)):
            c = contestants[index]
            # Let the previous library's worker threads stop spinning, so that
            # they do not steal cores from this one.
            time.sleep(_SETTLE)
            inner, run = timings[c.name].inner, c.run
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                for _ in range(inner):
                    run()
                timings[c.name].samples.append((time.perf_counter() - start) / inner)
            finally:
                gc.enable()
    return timings


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def describe(exc: Exception) -> str:
    """One short line for a peer's failure (onnxruntime's own text after its long prefix)."""
    text = str(exc).split("Status Message:")[-1].strip()
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:100]}"


def timed_run(contestant: Contestant) -> float:
    start = time.perf_counter()
    contestant.run()
    return time.perf_counter() - start


def check_peer(peer: Contestant, reference: dict[str, np.ndarray], dtype
               ) -> tuple[str, float]:
    """Run ``peer`` once and compare with pylstm's result: ("ok" or why it is excluded, time).

    Outputs must agree to 1e-4 (1e-9 in float64); gradients, whose entries sum
    over all B*T rows, to 1e-4 (1e-9) relative to their largest entry.
    """
    tol = 1e-9 if dtype == np.float64 else 1e-4
    try:
        seconds = timed_run(peer)
        result = peer.result()
    except Exception as exc:  # a peer that cannot run this case is skipped, with the reason
        return f"unsupported: {describe(exc)}", 0.0
    for key, ref in reference.items():
        scale = 1.0 if key == "out" else max(1.0, float(np.max(np.abs(ref))))
        diff = max_abs_diff(result[key], ref)
        if not diff <= tol * scale:
            return f"wrong: max |{key} - pylstm| = {diff:.3g} > {tol * scale:.3g}", seconds
    return "ok", seconds


def build_contestants(case: Case, threads: int, optimizer: str
                      ) -> tuple[list[Contestant], dict[str, float], dict[str, Timing],
                                 dict[str, Any]]:
    """pylstm and every installed peer for ``case``, peers checked against pylstm.

    Returns the contestants to time, the time of their first run, the timings
    of the excluded peers (status only) and case facts (lengths and their
    fraction of the padded batch; that case also times pylstm on the padded batch).
    """
    dtype = np.dtype(case.dtype)
    rng = np.random.default_rng(0)
    layer = pylstm.LSTM(case.input_size, case.hidden_size, case.num_layers,
                        bidirectional=case.bidirectional, dtype=dtype, random_state=0)
    lengths = case_lengths(case)
    facts: dict[str, Any] = {"lengths": None if lengths is None else lengths.tolist()}
    builders: dict[str, Callable[[], Contestant]] = {}
    if case.kind == "step":
        x_t = rng.standard_normal((case.batch, case.input_size)).astype(dtype)
        ours = peers.pylstm_step(layer, x_t)
        builders = {"torch": lambda: peers.torch_step(layer, x_t),
                    "onnxruntime": lambda: peers.ort_step(layer, x_t, threads),
                    "numpy": lambda: peers.numpy_step(layer, x_t)}
    elif case.kind == "infer":
        x = rng.standard_normal((case.batch, case.time, case.input_size)).astype(dtype)
        ours = peers.pylstm_forward(layer, x, lengths)
        builders = {"torch": lambda: peers.torch_forward(layer, x, lengths),
                    "onnxruntime": lambda: peers.ort_forward(layer, x, threads, lengths),
                    "numpy": lambda: peers.numpy_forward(layer, x, lengths)}
    else:
        x = rng.standard_normal((case.batch, case.time, case.input_size)).astype(dtype)
        grad_out = rng.standard_normal((case.batch, case.time, case.hidden_size)).astype(dtype)
        with_adam = case.kind == "train-opt"
        ours = peers.pylstm_train(layer, x, grad_out, optimizer if with_adam else None)
        builders = {"torch": lambda: peers.torch_train(layer, x, grad_out, with_adam),
                    "numpy": lambda: peers.numpy_train(layer, x, grad_out, with_adam)}
    # Build every peer (each copies the weights) before pylstm's first run, which
    # in train-mid changes pylstm's weights by an Adam step.
    built: dict[str, Contestant] = {}
    excluded: dict[str, Timing] = {}
    for name in peers.PEERS:
        if not PEER_VERSIONS.get(name):
            excluded[name] = Timing(status="not installed")
        elif name not in builders:
            excluded[name] = Timing(status="no training API")
        else:
            try:
                built[name] = builders[name]()
            except Exception as exc:
                excluded[name] = Timing(status=f"unsupported: {describe(exc)}")
    first_runs = {ours.name: timed_run(ours)}
    reference = ours.result()
    contestants = [ours]
    for name, peer in built.items():
        status, first_runs[name] = check_peer(peer, reference, dtype)
        if status == "ok":
            contestants.append(peer)
        else:
            excluded[name] = Timing(status=status, note=peer.note)
    if case.lengths:
        padded = peers.pylstm_forward(layer, x, None, name="pylstm-padded")
        first_runs[padded.name] = timed_run(padded)
        contestants.append(padded)
        facts["length_fraction"] = float(np.sum(lengths)) / (case.batch * case.time)
    return contestants, first_runs, excluded, facts


# ---------------------------------------------------------------------------
# Targets of issue 4
# ---------------------------------------------------------------------------
def evaluate_targets(case: Case, med: dict[str, float], floor: float,
                     facts: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(label, passed or None when a peer is missing, measured value) per target."""
    ours = med["pylstm"]

    def faster(peer: str, factor: float, strict: bool = False):
        theirs = med.get(peer, math.nan)
        ratio = theirs / ours
        label = f"{'>' if strict else '>='}{factor:g}x {'ort' if peer == 'onnxruntime' else peer}"
        if math.isnan(ratio):
            return label, None, "n/a"
        return label, bool(ratio > factor if strict else ratio >= factor), f"{ratio:.2f}x"

    if case.name == "step":
        return [("<=5us", ours <= 5e-6, f"{ours * 1e6:.1f}us"),
                faster("onnxruntime", 5), faster("torch", 20)]
    if case.name in ("seq-small", "deepbench-device"):
        return [faster("onnxruntime", 1.5), faster("torch", 3)]
    if case.name in ("mid", "large"):
        return [faster("torch", 1, strict=True), faster("onnxruntime", 1, strict=True),
                ("<=1.25x floor", ours <= 1.25 * floor, f"{ours / floor:.2f}x")]
    if case.name in ("deepbench-train", "train-mid"):
        return [faster("torch", 1.5)]
    if case.lengths:
        fraction = facts["length_fraction"]
        ratio = ours / med["pylstm-padded"]
        return [(f"len/padded <= 1.1*{fraction:.3f}", ratio <= 1.1 * fraction,
                 f"{ratio:.3f}")]
    return []


def verdict(targets: list[tuple[str, bool | None, str]]) -> str:
    if not targets:
        return ""
    if any(ok is False for _, ok, _ in targets):
        word = "MISS"
    elif any(ok is None for _, ok, _ in targets):
        word = "n/a"
    else:
        word = "PASS"
    details = ", ".join(f"{label} {value}{'' if ok else ' (miss)' if ok is False else ''}"
                        for label, ok, value in targets)
    return f"{word}: {details}"


# ---------------------------------------------------------------------------
# One thread count
# ---------------------------------------------------------------------------
def run_cases(cases: list[Case], threads: int, budget: Budget, optimizer: str, gemm_size: int,
              gemm_repeats: int, deadline: Deadline, slots_left: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Every case at one thread count; ``slots_left`` counts the cases still to run overall."""
    run: dict[str, Any] = {"threads": threads, "cases": []}
    with thread_limit(threads):
        sgemm = gemm_rate(np.float32, gemm_size, gemm_repeats)
        dgemm = gemm_rate(np.float64, gemm_size, gemm_repeats)
        for case in cases:
            log(f"  [{threads} thread{'s' * (threads > 1)}] {case.name} ...")
            contestants, first_runs, excluded, facts = build_contestants(case, threads,
                                                                         optimizer)
            facts["load_average"] = os.getloadavg()[0]
            timings = measure(contestants, budget, first_runs,
                              deadline.share(slots_left, budget.seconds))
            slots_left -= 1
            timings.update(excluded)
            run["cases"].append({"case": asdict(case), "facts": facts,
                                 "flops": case_flops(case, case_lengths(case)),
                                 "timings": {k: asdict(v) for k, v in timings.items()}})
        # the machine's rate, sampled before and after the cases, so both see the same noise
        sgemm += gemm_rate(np.float32, gemm_size, gemm_repeats)
        dgemm += gemm_rate(np.float64, gemm_size, gemm_repeats)
    # The limit is the best rate seen: load from other processes only ever lowers it.
    run["gemm"] = {"size": gemm_size, "sgemm_flops": sgemm, "dgemm_flops": dgemm,
                   "sgemm_best": max(sgemm), "dgemm_best": max(dgemm),
                   "sgemm_median": float(np.median(sgemm)),
                   "dgemm_median": float(np.median(dgemm))}
    for entry in run["cases"]:
        case = Case(**entry["case"])
        rate = run["gemm"]["dgemm_best" if case.dtype == "float64" else "sgemm_best"]
        entry["floor"] = entry["flops"] / rate
        med = {name: Timing(**t).median for name, t in entry["timings"].items()}
        targets = evaluate_targets(case, med, entry["floor"], entry["facts"])
        entry["targets"] = [{"target": label, "pass": ok, "value": value}
                            for label, ok, value in targets]
        entry["verdict"] = verdict(targets)
    return run


def fmt_time(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def format_table(run: dict[str, Any], markdown: bool = False) -> str:
    """One row per case: floor, median [IQR % of median] per library, ratios, targets."""
    header = ["case", "GFLOP", "floor", "pylstm", "torch", "onnxruntime", "numpy",
              "torch/py", "ort/py", "np/py", "py/floor", "n", "load", "targets"]
    rows = []
    notes = set()
    for entry in run["cases"]:
        timings = {name: Timing(**t) for name, t in entry["timings"].items()}
        ours = timings["pylstm"].median
        cells = [entry["case"]["name"], f"{entry['flops'] / 1e9:.3g}", fmt_time(entry["floor"])]
        for lib in LIBRARIES:
            t = timings[lib]
            if t.samples:
                cells.append(f"{fmt_time(t.median)} [{100 * t.iqr / t.median:.0f}%]")
            else:
                short = t.status.split(":")[0]
                cells.append(short)
                notes.add(f"{entry['case']['name']} / {lib}: {t.status}")
            if t.note:
                notes.add(f"{entry['case']['name']} / {lib}: {t.note}")
        for lib in peers.PEERS:
            ratio = timings[lib].median / ours
            cells.append("-" if math.isnan(ratio) else f"{ratio:.2f}")
        cells.append(f"{ours / entry['floor']:.2f}")
        cells.append(str(len(timings["pylstm"].samples)))
        cells.append(f"{entry['facts']['load_average']:.1f}")
        cells.append(entry["verdict"])
        rows.append(cells)
    gemm = run["gemm"]
    title = (f"threads = {run['threads']} (every library); best of {len(gemm['sgemm_flops'])} "
             f"SGEMM {gemm['size']}^3: {gemm['sgemm_best'] / 1e9:.1f} GFLOP/s, DGEMM "
             f"{gemm['dgemm_best'] / 1e9:.1f} GFLOP/s (floor = FLOPs / that rate; DGEMM for "
             f"float64)")
    legend = ("times: median per call [IQR as % of median]; x/py = library time / pylstm "
              "time (> 1: pylstm faster); n = samples per library; load = 1-min load "
              "average when the case started")
    if markdown:
        lines = [f"**{title}**", "", f"_{legend}_", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += [""] + [f"- {note}" for note in sorted(notes)]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    lines = [title, legend]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  targets")
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    lines += [f"  note: {note}" for note in sorted(notes)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Scaling sweep (for the PNG)
# ---------------------------------------------------------------------------
def run_sweep(threads: int, budget: Budget, axes: dict[str, list[int]], deadline: Deadline,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Inference time vs T, B and H around mid (T=100, B=32, I=64, H=256).

    Once the deadline has passed, only each axis's end points are measured
    (one sample each); the points skipped are counted in the result.
    """
    base = {"time": 100, "batch": 32, "input_size": 64, "hidden_size": 256}
    sweep: dict[str, Any] = {"threads": threads, "base": base, "axes": {}}
    with thread_limit(threads):
        rate = max(gemm_rate(np.float32, 1024, 3))
        sweep["sgemm_flops"] = rate
        points_left = sum(len(values) for values in axes.values())
        for axis, values in axes.items():
            log(f"  [sweep] {axis} in {values} ...")
            points = []
            for k, value in enumerate(values):
                seconds = deadline.share(points_left, budget.seconds)
                points_left -= 1
                if seconds <= 0 and 0 < k < len(values) - 1:
                    sweep["skipped"] = sweep.get("skipped", 0) + 1
                    continue
                case = Case(f"sweep-{axis}-{value}", **{**base, axis: value})
                contestants, first_runs, _, _ = build_contestants(case, threads, "bench")
                timings = measure(contestants, budget, first_runs, seconds)
                points.append({"value": value, "floor": case_flops(case) / rate,
                               "median": {k: v.median for k, v in timings.items()}})
            sweep["axes"][axis] = points
    return sweep


def plot_sweep(sweep: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = {"time": "T (time steps)", "batch": "B (batch)", "hidden_size": "H (hidden size)"}
    fig, axes = plt.subplots(1, len(sweep["axes"]), figsize=(5 * len(sweep["axes"]), 4.2))
    for ax, (axis, points) in zip(np.atleast_1d(axes), sweep["axes"].items()):
        values = [p["value"] for p in points]
        for lib in LIBRARIES:
            times = [p["median"].get(lib, math.nan) * 1e3 for p in points]
            if not all(math.isnan(t) for t in times):
                ax.plot(values, times, marker="o", label=lib)
        if not points:
            continue
        ax.plot(values, [p["floor"] * 1e3 for p in points], "k--", label="floor (SGEMM)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(labels.get(axis, axis))
        ax.set_ylabel("ms per forward call (median)")
        others = ", ".join(f"{k[0].upper()}={v}" for k, v in sweep["base"].items() if k != axis)
        ax.set_title(f"vs {axis[0].upper()} ({others})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"pylstm inference scaling, float32, {sweep['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# Memory, import time, determinism
# ---------------------------------------------------------------------------
def inference_extra_memory(time_steps: int) -> dict[str, int]:
    """Peak bytes traced during one inference call, less the output arrays (B=32, I=64, H=256)."""
    layer = pylstm.LSTM(64, 256, random_state=0)
    x = np.random.default_rng(0).standard_normal((32, time_steps, 64)).astype(np.float32)
    layer(x[:, :10])  # warm up outside the trace
    gc.collect()
    tracemalloc.start()
    try:
        out, (h_n, c_n) = layer(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = out.nbytes + h_n.nbytes + c_n.nbytes
    return {"T": time_steps, "peak": peak, "input": x.nbytes, "outputs": outputs,
            "extra": peak - outputs}


def import_time(module: str, repeats: int = 5) -> list[float]:
    """Seconds to import ``module`` in fresh interpreters, finding the pylstm benchmarked here."""
    code = ("import time; s = time.perf_counter(); import {0}; "
            "print(time.perf_counter() - s)").format(module)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(pylstm.__file__).resolve().parent.parent)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    times = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True)
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return times


def determinism(quick: bool) -> dict[str, list[str]]:
    """Are outputs and gradients bitwise identical at 1 and 2 threads? Differing arrays by run."""

    def results(threads: int) -> dict[str, dict[str, bytes]]:
        found = {}
        with thread_limit(threads):
            for name, (T, B, I, H, layers, bidi, lengths) in {
                    "mid": (100, 32, 64, 256, 1, False, None),
                    **({} if quick else {"large": (50, 128, 512, 512, 1, False, None)}),
                    "bidir2-lengths": (60, 16, 32, 128, 2, True,
                                       np.random.default_rng(2).integers(30, 61, size=16)),
            }.items():
                layer = pylstm.LSTM(I, H, layers, bidirectional=bidi, random_state=0)
                x = np.random.default_rng(3).standard_normal((B, T, I)).astype(np.float32)
                grad = np.random.default_rng(4).standard_normal(
                    (B, T, H * (2 if bidi else 1))).astype(np.float32)
                out, (h_n, c_n) = layer(x, lengths=lengths)
                found[f"{name} forward"] = {"out": out.tobytes(), "h_n": h_n.tobytes(),
                                            "c_n": c_n.tobytes()}
                out, _, cache = layer.forward_train(x, lengths=lengths)
                grads = layer.backward(cache, grad)
                found[f"{name} forward+backward"] = {
                    "out": out.tobytes(), "grad params": grads.flat.tobytes(),
                    "grad input": grads.input.tobytes(), "grad h0": grads.state[0].tobytes(),
                    "grad c0": grads.state[1].tobytes()}
        return found

    one, two = results(1), results(2)
    return {key: [name for name in one[key] if one[key][name] != two[key][name]]
            for key in one}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
PEER_VERSIONS: dict[str, str | None] = {}


def machine_info() -> dict[str, Any]:
    from threadpoolctl import threadpool_info
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    kernel = getattr(pylstm, "_kernel", None)
    simd = {0: "portable (BLAS)", 1: "AVX2+FMA", 2: "AVX-512"}
    level = getattr(kernel, "simd_level", lambda: None)()
    where = Path(pylstm.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git tree"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "pylstm": pylstm.__version__,
            "pylstm_path": str(where), "pylstm_commit": commit,
            "pylstm_simd": simd.get(level, str(level)),
            "pylstm_threads": pylstm_thread_mechanism(),
            "versions": dict(PEER_VERSIONS),
            "blas": [{k: i.get(k) for k in ("internal_api", "prefix", "version",
                                            "architecture", "filepath")}
                     for i in threadpool_info()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", default=",".join(str(n) for n in sorted({1, cores})),
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="most samples per library and case (default 15, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run (< 1 min)")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated case names (default: all)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time limit of the whole run: repeats shrink to fit it "
                             "(default 9, 0.8 with --quick)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results"),
                        help="directory for results.json, results.md, scaling.png")
    args = parser.parse_args(argv)
    thread_counts = [int(n) for n in args.threads.split(",") if n.strip()]
    if not thread_counts or min(thread_counts) < 1:
        parser.error(f"--threads must list positive integers, got {args.threads!r}")
    cases = [c for c in CASES if c.name in args.cases.split(",")]
    unknown = set(args.cases.split(",")) - {c.name for c in CASES}
    if unknown or not cases:
        parser.error(f"--cases: unknown {sorted(unknown)}; known: {[c.name for c in CASES]}")
    repeats = args.repeats or (3 if args.quick else 15)
    if args.quick:
        budget = Budget(repeats, 1, 0.3, 0.002, warm_up=False)
        sweep_budget = Budget(1, 1, 0.0, 0.002, warm_up=False)
        axes = {"time": [25, 50], "batch": [1, 8], "hidden_size": [64, 128]}
        gemm_size, gemm_repeats, memory_steps, import_repeats = 1024, 2, 2_000, 3
    else:
        budget = Budget(repeats, min(repeats, 5), 8.0, 0.02)
        sweep_budget = Budget(min(repeats, 7), min(repeats, 3), 1.0, 0.01)
        axes = {"time": [25, 50, 100, 200, 400], "batch": [1, 4, 16, 32, 64, 128],
                "hidden_size": [64, 128, 256, 512]}
        gemm_size, gemm_repeats, memory_steps, import_repeats = 2048, 3, 10_000, 5
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    PEER_VERSIONS.update(peers.available())
    if PEER_VERSIONS.get("onnxruntime"):
        import onnxruntime
        onnxruntime.set_default_logger_severity(4)  # its failures are reported in the table
    try:
        import pylstm._optimizers as _opt
        _opt.Adam([4], np.float32, learning_rate_init=1e-3).step(
            [np.zeros(4, np.float32)], [np.ones(4, np.float32)])
        optimizer = "pylstm"
    except Exception:
        optimizer = "bench"

    started = time.perf_counter()
    limit = 60 * (args.minutes or (0.8 if args.quick else 9.0))
    # A library that hangs (a lost thread wake-up, say) would stall the run in C code:
    # print every thread's stack and exit well past the limit instead.
    faulthandler.dump_traceback_later(2 * limit + 300, exit=True)
    # the cases get 70% of the time, the sweep the next 15%, the extras the rest
    case_deadline, sweep_deadline = Deadline(0.70 * limit), Deadline(0.85 * limit)
    slots_left = len(cases) * len(thread_counts)

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    info = machine_info()
    info["load_average_start"] = os.getloadavg()
    info["optimizer"] = {"pylstm": "pylstm._optimizers.Adam on flat_parameters",
                         "bench": "bench/numpy_lstm.py Adam on flat_parameters"}[optimizer]
    print(f"pylstm {info['pylstm']} from {info['pylstm_path']} ({info['pylstm_commit']}), "
          f"{info['pylstm_simd']}; {info['cpu']}, {info['cores']} cores, "
          f"Python {info['python']}")
    print("load average (1, 5, 15 min) at start: "
          + ", ".join(f"{x:.2f}" for x in info["load_average_start"])
          + ("  <- busy machine: timings are noisy, and runs using all cores can be "
             "many times slower (threads waiting on each other)"
             if info["load_average_start"][0] > 0.5 * cores else ""))
    print("peers: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in PEER_VERSIONS.items()))
    print(f"threads: {thread_counts}; pylstm via {info['pylstm_threads']}, torch via "
          f"torch.set_num_threads, onnxruntime via intra_op = inter_op = n; BLAS and OpenMP "
          f"pools via threadpoolctl")
    print(f"train-mid optimizer: pylstm = {info['optimizer']}; torch = torch.optim.Adam; "
          f"numpy = bench Adam. Training peers also compute dL/dx, as pylstm does.")
    report: dict[str, Any] = {"machine": info, "argv": sys.argv[1:], "quick": args.quick,
                              "budget": asdict(budget), "runs": []}
    tables = []
    for threads in thread_counts:
        run = run_cases(cases, threads, budget, optimizer, gemm_size, gemm_repeats,
                        case_deadline, slots_left, log)
        slots_left -= len(cases)
        report["runs"].append(run)
        table = format_table(run)
        tables.append(format_table(run, markdown=True))
        print("\n" + table, flush=True)

    log("scaling sweep ...")
    # one thread: the shape of the growth, least disturbed by other work on the machine
    report["sweep"] = run_sweep(min(thread_counts), sweep_budget, axes, sweep_deadline, log)
    if report["sweep"].get("skipped"):
        print(f"\nscaling sweep: {report['sweep']['skipped']} points skipped for lack of time")

    log("memory, import time, determinism ...")
    with thread_limit(max(thread_counts)):
        memory = [inference_extra_memory(100), inference_extra_memory(memory_steps)]
    report["memory"] = memory
    imports = {"pylstm": import_time("pylstm", import_repeats),
               "numpy": import_time("numpy", import_repeats)}
    report["import_time"] = imports
    same = determinism(args.quick)
    report["determinism_1_vs_2_threads"] = same

    mb = 1 / 2 ** 20
    extras = [
        "",
        "inference peak extra memory (B=32, I=64, H=256; beyond input and output arrays): "
        + ", ".join(f"T={m['T']}: {m['extra'] * mb:.2f} MiB" for m in memory)
        + f"  (T={memory[-1]['T']}: input {memory[-1]['input'] * mb:.0f} MiB, "
          f"outputs {memory[-1]['outputs'] * mb:.0f} MiB not counted; "
          f"growth {memory[-1]['extra'] / max(memory[0]['extra'], 1):.2f}x)",
        f"import pylstm in a fresh interpreter: {np.median(imports['pylstm']) * 1e3:.0f} ms "
        f"median of {len(imports['pylstm'])} (import numpy alone: "
        f"{np.median(imports['numpy']) * 1e3:.0f} ms)",
        "outputs + gradients bitwise identical at 1 and 2 threads: "
        + ("no" if any(same.values()) else "yes")
        + " (" + ", ".join(f"{k}: " + (f"no, {' / '.join(v)} differ" if v else "yes")
                           for k, v in same.items()) + ")",
    ]
    print("\n".join(extras))

    info["load_average_end"] = os.getloadavg()
    extras.append("load average (1, 5, 15 min) at end: "
                  + ", ".join(f"{x:.2f}" for x in info["load_average_end"]))
    print(extras[-1])
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    (out_dir / "results.md").write_text("\n\n".join(tables + ["\n".join(extras)]) + "\n")
    plotted = plot_sweep(report["sweep"], out_dir / "scaling.png")
    faulthandler.cancel_dump_traceback_later()
    log(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}"
        + (f", {out_dir / 'scaling.png'}" if plotted else " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
