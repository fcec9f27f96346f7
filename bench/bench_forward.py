"""First benchmark: pylstm.LSTM.__call__ against torch.nn.LSTM on the same weights.

Medians over repeated, interleaved runs in one process, at a stated thread
count (BLAS threads for pylstm via threadpoolctl, torch.set_num_threads for
torch). Prints a table and the ratio torch / pylstm (> 1 means pylstm is faster).

    python bench/bench_forward.py [--threads 1] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pylstm

CASES = {  # name: (T, B, input, hidden)
    "seq-small": (100, 1, 32, 128),
    "deepbench-device": (150, 1, 256, 256),
    "mid": (100, 32, 64, 256),
    "large": (50, 128, 512, 512),
}


def median_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: timing pylstm alone")

    threadpool_limits(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads: {args.threads} (pylstm BLAS and torch), cores: {os.cpu_count()}, "
          f"median of {args.repeats} runs, float32")
    print(f"{'case':<18}{'pylstm ms':>11}{'torch ms':>11}{'torch/pylstm':>14}")
    for name, (T, B, I, H) in CASES.items():
        rng = np.random.default_rng(0)
        layer = pylstm.LSTM(I, H, random_state=0)
        x = rng.standard_normal((B, T, I)).astype(np.float32)
        ours = median_time(lambda: layer(x), args.repeats)
        theirs = float("nan")
        if torch is not None:
            module = torch.nn.LSTM(I, H, batch_first=True)
            module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                theirs = median_time(lambda: module(xt), args.repeats)
        print(f"{name:<18}{ours * 1e3:>11.3f}{theirs * 1e3:>11.3f}{theirs / ours:>14.2f}")


if __name__ == "__main__":
    main()
