"""Wall time of inference from 2 threads against 1, on one shared model (issue 6).

The compiled kernel releases the GIL for its whole computation, so threads
calling one fitted model should overlap. Each workload runs a fixed number of
calls, either all in one thread or split evenly over N threads sharing the
model, and reports the median wall time of each and their ratio (the
speed-up; the ideal is min(N, cores)). BLAS runs single-threaded
(threadpoolctl), so only the Python threads compete for cores, and the runs
with 1 and N threads alternate, so that drift in the machine's load hits both.

It also reports the process's CPU time over wall time (cores kept busy), and
runs a control first, a NumPy matrix product (which releases the GIL): when
other work keeps the machine busy, the control's speed-up shows how much
parallelism the machine grants at all.

    python bench/bench_threads.py                 # 1 vs 2 threads, every workload
    python bench/bench_threads.py --threads 4 --repeats 9 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylstm  # noqa: E402
from pylstm import _kernel  # noqa: E402


def workloads(calls_scale: float):
    """(name, SIMD level or None, call, number of calls) for each workload."""
    rng = np.random.default_rng(0)
    seq = pylstm.LSTM(32, 128, num_layers=2, random_state=0)
    x = rng.standard_normal((16, 50, 32)).astype(np.float32)
    lengths = rng.integers(10, 51, 16)
    streamer = pylstm.LSTM(32, 128, num_layers=2, random_state=1)
    x_t = rng.standard_normal((8, 32)).astype(np.float32)
    state = streamer.initial_state(8)
    double = pylstm.LSTM(32, 128, num_layers=2, dtype=np.float64, random_state=2)
    x64 = x.astype(np.float64)
    square = rng.standard_normal((300, 300))
    items = [
        # the control: a product NumPy runs without the GIL shows what the machine allows
        ("control: NumPy 300x300 matmul", None, lambda: square @ square, 600),
        ("LSTM.__call__ float32 (16, 50, 32), H=128 x2", None, lambda: seq(x, lengths=lengths),
         200),
        ("LSTM.__call__ float32, portable (BLAS)", "portable", lambda: seq(x, lengths=lengths),
         200),
        ("LSTM.__call__ float64 (16, 50, 32), H=128 x2", None, lambda: double(x64), 100),
        ("LSTM.step float32 batch 8, H=128 x2", None, lambda: streamer.step(x_t, state), 4000),
    ]
    try:
        from pylstm import LSTMClassifier
    except ImportError:
        print("scikit-learn not installed: skipping LSTMClassifier.predict")
    else:
        X = rng.standard_normal((64, 30, 8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LSTMClassifier(hidden_size=64, max_iter=2, random_state=0).fit(
                X, X[:, 0, 0] > 0)
        items.append(("LSTMClassifier.predict (64, 30, 8), H=64", None,
                      lambda: model.predict(X), 200))
    return [(name, level, call, max(2, int(calls * calls_scale)))
            for name, level, call, calls in items]


def set_level(level: str | None) -> None:
    """Cap the SIMD level (PYLSTM_SIMD, read per call), or lift the cap with None."""
    if level is None:
        os.environ.pop("PYLSTM_SIMD", None)
    else:
        os.environ["PYLSTM_SIMD"] = level


def wall_time(call, calls: int, threads: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``calls`` calls split evenly over ``threads`` threads."""
    share = [calls // threads + (i < calls % threads) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(n):
        barrier.wait()
        for _ in range(n):
            call()

    pool = [threading.Thread(target=worker, args=(n,)) for n in share]
    for thread in pool:
        thread.start()
    barrier.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads to compare with 1")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the call counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    levels = {0: "portable (BLAS)", 1: "AVX2+FMA", 2: "AVX-512"}
    print(f"cores: {cores}; SIMD: {levels[_kernel.simd_level()]}; BLAS threads: 1; "
          f"median of {args.repeats} runs, 1 and {args.threads} threads alternating")
    results = []
    saved_level = os.environ.get("PYLSTM_SIMD")
    with threadpool_limits(1):
        for name, level, call, calls in workloads(args.scale):
            set_level(saved_level if level is None else level)
            for _ in range(max(1, calls // 20)):  # warm up: weight cache, allocator
                call()
            times = {1: [], args.threads: []}
            busy = {1: [], args.threads: []}
            for _ in range(args.repeats):
                for threads in times:
                    wall, cpu = wall_time(call, calls, threads)
                    times[threads].append(wall)
                    busy[threads].append(cpu / wall)
            one = statistics.median(times[1])
            many = statistics.median(times[args.threads])
            results.append({"workload": name, "calls": calls, "threads": args.threads,
                            "median_1_thread_s": one, f"median_{args.threads}_threads_s": many,
                            "speedup": one / many, "ideal": min(args.threads, cores),
                            "cores_busy_1_thread": statistics.median(busy[1]),
                            f"cores_busy_{args.threads}_threads":
                                statistics.median(busy[args.threads])})
    set_level(saved_level)

    width = max(len(r["workload"]) for r in results)
    n = args.threads
    print(f"{'workload':<{width}}  calls  {'1 thread':>9}  {f'{n} threads':>10}  speed-up"
          f"        cores busy (1 / {n})")
    for r in results:
        print(f"{r['workload']:<{width}}  {r['calls']:>5}  {r['median_1_thread_s']:>8.3f}s  "
              f"{r[f'median_{n}_threads_s']:>9.3f}s  {r['speedup']:>5.2f}x "
              f"(ideal {r['ideal']}x)  {r['cores_busy_1_thread']:.2f} / "
              f"{r[f'cores_busy_{n}_threads']:.2f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average over the last minute: {load:.2f} on {cores} cores")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "results": results}, indent=2))


if __name__ == "__main__":
    main()
