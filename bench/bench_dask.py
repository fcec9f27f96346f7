"""Throughput of distributed inference (pylstm.dask.predict) against in-process predict.

One fitted LSTMClassifier, one batch of sequences, predicted:

* in process, ``model.predict(X)`` (the baseline: one thread, pylstm's default),
  and with 2 threads of pylstm's own pool (``pylstm.threads(2)``);
* with Dask's local threaded scheduler, no cluster (2 threads);
* on a ``LocalCluster`` of worker processes: 1 worker x 1 thread, 2 workers x
  1 thread, and 1 worker x 2 threads, with X already on the workers
  (``persist``, as data read by the workers would be) and with X sent from
  this process on every run.

Each distributed run includes scattering the model and gathering the
predictions. All clusters are up at once, and the runs take turns, so that
a change in the machine's load affects every row alike; medians of
``--repeats`` turns after one warm-up, and the best (shortest) turn, which
says more on a shared machine. The ratios are throughput over the in-process
baseline's (> 1 is faster), median to median and best to best. Every result
is checked equal to the baseline's. The machine's load average is printed: on
a shared machine, other processes take cores from the workers.

    python bench/bench_dask.py [--samples 16000] [--chunk 2000] [--repeats 7]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time
import warnings

import numpy as np


def interleaved_times(runs: dict, repeats: int, expected: np.ndarray) -> dict:
    """Seconds of each run, ``repeats`` times, timed in turns so that a change of load hits all alike."""
    for fn in runs.values():   # warm-up (workers import pylstm), and the results are the same
        np.testing.assert_array_equal(fn(), expected)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _distributed_predict(model, X_dask, client) -> np.ndarray:
    import pylstm.dask

    return pylstm.dask.predict(model, X_dask, client=client).compute(scheduler=client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16000)
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=2000, help="sequences per dask chunk")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    import pylstm
    import pylstm.dask
    from pylstm import LSTMClassifier

    # what the workers get from the nanny (distributed.nanny.pre-spawn-environ);
    # pylstm's own pool stays at its default, 1 thread, here and on the workers
    threadpool_limits(1)
    # the "X from client" runs send X in the graph on purpose
    warnings.filterwarnings("ignore", message="Sending large graph")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, args.timesteps, args.features)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LSTMClassifier(hidden_size=args.hidden, max_iter=1, random_state=0).fit(
            X[:500], y[:500])
    expected = model.predict(X)
    X_dask = da.from_array(X, chunks=(args.chunk, args.timesteps, args.features))

    def predict_with_kernel_threads():
        with pylstm.threads(2):
            return model.predict(X)

    runs = {"in process: model.predict(X)": lambda: model.predict(X),
            "in process, pylstm.threads(2)": predict_with_kernel_threads,
            "dask threads, no cluster (2 threads)": lambda: pylstm.dask.predict(
                model, X_dask).compute(scheduler="threads", num_workers=2)}
    clients = []
    with contextlib.ExitStack() as stack:
        # all clusters up at once, idle between their turns
        for n_workers, threads in ((1, 1), (2, 1), (1, 2)):
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers, threads_per_worker=threads, processes=True,
                host="127.0.0.1", dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}))
            client = stack.enter_context(Client(cluster, set_as_default=False))
            clients.append(client)
            client.wait_for_workers(n_workers)
            on_workers = client.persist(X_dask)
            label = (f"cluster: {n_workers} worker{'s' * (n_workers > 1)} x "
                     f"{threads} thread{'s' * (threads > 1)}")
            runs[f"{label}, X on workers"] = functools.partial(
                _distributed_predict, model, on_workers, client)
            runs[f"{label}, X from client"] = functools.partial(
                _distributed_predict, model, X_dask, client)
        times = interleaved_times(runs, args.repeats, expected)
        workers_threads = [count for client in clients
                           for count in client.run(pylstm.get_num_threads).values()]
    medians = {name: statistics.median(values) for name, values in times.items()}
    bests = {name: min(values) for name, values in times.items()}
    baseline, baseline_best = next(iter(medians.values())), next(iter(bests.values()))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{args.samples} sequences x {args.timesteps} steps x {args.features} features, "
          f"hidden {args.hidden}, float32, chunks of {args.chunk}; cores: {os.cpu_count()}, "
          f"load average: {load}; pylstm threads: {pylstm.get_num_threads()} (workers: "
          f"{set(workers_threads)}); median of {args.repeats} runs")
    print(f"{'':<48}{'median s':>9}{'seq/s':>9}{'ratio':>7}{'best s':>9}{'ratio':>7}")
    for name, median in medians.items():
        print(f"{name:<48}{median:>9.3f}{args.samples / median:>9.0f}{baseline / median:>6.2f}x"
              f"{bests[name]:>9.3f}{baseline_best / bests[name]:>6.2f}x")

if __name__ == "__main__":
    main()
