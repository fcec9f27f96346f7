"""The estimators on real data, vendored in tests/data (see its README.md); nothing is downloaded.

Each threshold sits below the figure measured with the fixed random_state
(noted beside it, with the baseline's figure), leaving room for float32
rounding that differs across BLAS builds and thread counts.
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from pylstm import LSTMClassifier, LSTMRegressor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
import datasets  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def majority_accuracy(y_train, y_test):
    labels, counts = np.unique(y_train, return_counts=True)
    return float(np.mean(y_test == labels[np.argmax(counts)]))


def test_italy_power_demand_beats_majority_class():
    """Winter vs summer days from 24 hourly demand values (univariate, 2-D X)."""
    X_train, y_train, X_test, y_test = datasets.italy_power_demand()
    assert majority_accuracy(y_train, y_test) == pytest.approx(0.498, abs=1e-3)  # baseline
    clf = LSTMClassifier(hidden_size=16, max_iter=100, learning_rate_init=1e-2,
                         random_state=0).fit(X_train, y_train)
    # measured 0.957 test accuracy (logistic regression on the window: 0.963)
    assert clf.score(X_test, y_test) > 0.93


def test_japanese_vowels_beats_majority_and_nearest_neighbour():
    """Nine speakers from 12 cepstrum coefficients over 7-29 frames (zeros in front)."""
    X_train, y_train, X_test, y_test = datasets.japanese_vowels()
    assert majority_accuracy(y_train, y_test) == pytest.approx(0.084, abs=1e-3)  # baseline
    clf = LSTMClassifier(hidden_size=16, max_iter=30, learning_rate_init=1e-2, batch_size=32,
                         random_state=0).fit(X_train, y_train)
    # measured 0.970 (1-NN on the padded window: 0.916; logistic regression: 0.978)
    assert clf.score(X_test, y_test) > 0.94


def test_sunspots_one_step_forecast_beats_persistence_and_linear_ar():
    """Next year's sunspot activity from the last 24 years; the last 40 years held out."""
    series, lookback, held_out = datasets.sunspots(), 24, 40
    X, y = datasets.windows(series, lookback)
    mean, std = series[:-held_out].mean(), series[:-held_out].std()   # train statistics only
    X_train, y_train = (X[:-held_out] - mean) / std, (y[:-held_out] - mean) / std

    def rmse(prediction):
        return float(np.sqrt(np.mean((prediction - y[-held_out:]) ** 2)))

    persistence = rmse(X[-held_out:, -1])
    linear = rmse(LinearRegression().fit(X[:-held_out], y[:-held_out]).predict(X[-held_out:]))
    assert persistence == pytest.approx(29.89, abs=0.01)   # baseline: last value
    assert linear == pytest.approx(17.20, abs=0.01)        # baseline: linear AR(24)
    reg = LSTMRegressor(hidden_size=16, max_iter=60, learning_rate_init=1e-2, batch_size=64,
                        random_state=0).fit(X_train, y_train)
    # measured RMSE 12.95
    assert rmse(reg.predict((X[-held_out:] - mean) / std) * std + mean) < 15.5


def test_japanese_vowels_as_variable_length_sequences():
    """The same task on the sequences as recorded (7-26 frames), no padding: a list of arrays."""
    from sklearn.neighbors import KNeighborsClassifier

    train, y_train = datasets.load_ts("JapaneseVowels_TRAIN")
    test, y_test = datasets.load_ts("JapaneseVowels_TEST")
    padded_train, _, padded_test, _ = datasets.japanese_vowels()
    nearest = KNeighborsClassifier(1).fit(padded_train.reshape(270, -1), y_train)
    one_nn = nearest.score(padded_test.reshape(370, -1), y_test)
    assert one_nn == pytest.approx(0.903, abs=1e-3)                # baseline: 1-NN, pre-padded
    clf = LSTMClassifier(hidden_size=16, bidirectional=True, max_iter=30, learning_rate_init=1e-2,
                         batch_size=32, random_state=0).fit(train, y_train)
    # measured 0.957 (seed 1: 0.965; unidirectional 0.951); each sequence read from its own
    # end backwards, 4,274 real steps per epoch in buckets padded to ~4,490 (7,830 padded to 29)
    assert clf.score(test, y_test) > 0.93


def test_airline_forecast_beats_seasonal_naive():
    """The last 12 months (1960) from the 132 before, in one 12-step direct forecast."""
    from pylstm import LSTMForecaster, make_windows

    series, held_out, lookback = datasets.airline(), 12, 24
    train, truth = series[:-held_out], series[-held_out:]

    def rmse(prediction):
        return float(np.sqrt(np.mean((prediction - truth) ** 2)))

    seasonal_naive = rmse(train[-12:])                             # 1959's months again
    X, y = make_windows(train, lookback)
    linear = LinearRegression().fit(X, y[:, 0])                    # AR(24), fed back
    window = list(train[-lookback:])
    for _ in range(held_out):
        window.append(linear.predict(np.array(window[-lookback:])[np.newaxis])[0])
    assert seasonal_naive == pytest.approx(50.71, abs=0.01)        # baseline
    assert rmse(np.array(window[lookback:])) == pytest.approx(14.04, abs=0.01)   # baseline
    forecaster = LSTMForecaster(lookback, held_out, hidden_size=32, max_iter=200,
                                random_state=0).fit(train)
    # measured RMSE 17.05 (seeds 1, 2: 20.98, 22.81): far better than seasonal naive, not as
    # good as the linear AR on these 108 training windows
    assert rmse(forecaster.predict()) < 25.0
