"""The main job: train and evaluate pylstm's estimators on real data, end to end.

    python examples/main_job.py [--out main_job.png]

Four real tasks (data vendored in tests/data, nothing downloaded): two sequence
classifications (JapaneseVowels as variable-length sequences, no padding), a
one-step-ahead forecast and a 12-month forecast with LSTMForecaster. For each it
prints the test metric, simple baselines' metrics and the fit time, then draws
the learning curves and the forecasts against the truth into a PNG when
matplotlib is installed.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression

from pylstm import LSTMClassifier, LSTMForecaster, LSTMRegressor, make_windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
import datasets  # noqa: E402


def majority_accuracy(y_train, y_test):
    labels, counts = np.unique(y_train, return_counts=True)
    return float(np.mean(y_test == labels[np.argmax(counts)]))


def timed_fit(model, X, y):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return time.perf_counter() - start


def classification(name, loader, **params):
    X_train, y_train, X_test, y_test = loader()
    model = LSTMClassifier(random_state=0, **params)
    seconds = timed_fit(model, X_train, y_train)
    shape = X_train.shape if hasattr(X_train, "shape") else \
        f"{len(X_train)} x ({min(map(len, X_train))}-{max(map(len, X_train))}, " \
        f"{X_train[0].shape[1]})"
    return dict(task=name, metric="accuracy", value=model.score(X_test, y_test),
                baseline="majority class", baseline_value=majority_accuracy(y_train, y_test),
                seconds=seconds, model=model, shape=shape)


def japanese_vowels_sequences():
    """The recorded sequences, 7-26 frames each, as lists of (T_i, 12) arrays."""
    train, y_train = datasets.load_ts("JapaneseVowels_TRAIN")
    test, y_test = datasets.load_ts("JapaneseVowels_TEST")
    return train, y_train, test, y_test


def airline_forecast(lookback=24, held_out=12, **params):
    """1960's 12 months from 1949-1959 in one direct forecast, vs seasonal naive and AR(24)."""
    series = datasets.airline()
    train, truth = series[:-held_out], series[-held_out:]
    model = LSTMForecaster(lookback, held_out, random_state=0, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train)
    seconds = time.perf_counter() - start
    forecast = model.predict()

    def rmse(prediction):
        return float(np.sqrt(np.mean((prediction - truth) ** 2)))

    X, y = make_windows(train, lookback)
    linear = LinearRegression().fit(X, y[:, 0])
    window = list(train[-lookback:])
    for _ in range(held_out):            # the linear AR feeds its own forecasts back
        window.append(linear.predict(np.array(window[-lookback:])[np.newaxis])[0])
    linear_forecast = np.array(window[lookback:])
    return dict(task="Airline, next 12 months", metric="RMSE", value=rmse(forecast),
                baseline="seasonal naive", baseline_value=rmse(train[-12:]),
                extra=f"linear AR({lookback}) {rmse(linear_forecast):.2f}", seconds=seconds,
                model=model.regressor_, shape=(len(train),), forecast=forecast, truth=truth,
                history=series, linear=linear_forecast, seasonal=train[-12:])


def sunspots_forecast(lookback=24, held_out=40, **params):
    series = datasets.sunspots()
    X, y = datasets.windows(series, lookback)
    mean, std = series[:-held_out].mean(), series[:-held_out].std()
    model = LSTMRegressor(random_state=0, **params)
    seconds = timed_fit(model, (X[:-held_out] - mean) / std, (y[:-held_out] - mean) / std)
    forecast = model.predict((X[-held_out:] - mean) / std) * std + mean
    truth = y[-held_out:]

    def rmse(prediction):
        return float(np.sqrt(np.mean((prediction - truth) ** 2)))

    linear = LinearRegression().fit(X[:-held_out], y[:-held_out]).predict(X[-held_out:])
    return dict(task="sunspots, next year", metric="RMSE", value=rmse(forecast),
                baseline="persistence", baseline_value=rmse(X[-held_out:, -1]),
                extra=f"linear AR({lookback}) {rmse(linear):.2f}", seconds=seconds, model=model,
                shape=X[:-held_out].shape, forecast=forecast, truth=truth,
                years=1700 + lookback + np.arange(len(y))[-held_out:])


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'pylstm[plot]')")
        return
    figure, (curves, forecast, airline) = plt.subplots(1, 3, figsize=(17, 4.5))
    for result in results:
        curves.plot(np.arange(1, len(result["model"].loss_curve_) + 1),
                    result["model"].loss_curve_, label=result["task"])
    curves.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Learning curves")
    curves.legend()
    sun = results[2]
    forecast.plot(sun["years"], sun["truth"], "k-", label="observed")
    forecast.plot(sun["years"], sun["forecast"], "C3--", label=f"LSTM (RMSE {sun['value']:.1f})")
    forecast.set(xlabel="year", ylabel="sunspot activity",
                 title="Held-out one-step forecasts vs truth")
    forecast.legend()
    air = results[3]
    months = 1949 + np.arange(len(air["history"])) / 12
    future = months[-len(air["truth"]):]
    recent = months >= 1956           # the last years, where the forecast is readable
    airline.plot(months[recent], air["history"][recent], "k-", label="observed")
    airline.plot(future, air["forecast"], "C3--", label=f"LSTM (RMSE {air['value']:.1f})")
    airline.plot(future, air["linear"], "C0:", label=f"linear AR ({air['extra'].split()[-1]})")
    airline.plot(future, air["seasonal"], "C2:",
                 label=f"seasonal naive ({air['baseline_value']:.1f})")
    airline.set(xlabel="year", ylabel="passengers (thousands)",
                title="Airline: 12-month forecast from 1959")
    airline.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="main_job.png", help="PNG path for the plot")
    args = parser.parse_args()
    start = time.perf_counter()
    results = [
        classification("ItalyPowerDemand (2 classes)", datasets.italy_power_demand,
                       hidden_size=32, max_iter=150, learning_rate_init=1e-2),
        classification("JapaneseVowels (9 speakers)", japanese_vowels_sequences,
                       hidden_size=32, bidirectional=True, max_iter=40, learning_rate_init=1e-2,
                       batch_size=32),
        sunspots_forecast(hidden_size=32, max_iter=150, learning_rate_init=1e-2, batch_size=32),
        airline_forecast(hidden_size=32, max_iter=200),
    ]
    print(f"{'task':<30} {'train X':>18} {'metric':>16} {'baseline':>28} {'fit':>8}")
    for r in results:
        metric = f"{r['metric']} {r['value']:.3f}"
        baseline = f"{r['baseline']} {r['baseline_value']:.3f}"
        print(f"{r['task']:<30} {str(r['shape']):>18} {metric:>16} {baseline:>28} "
              f"{r['seconds']:>7.1f}s" + (f"   ({r['extra']})" if "extra" in r else ""))
    plot(results, args.out)
    print(f"total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
