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
