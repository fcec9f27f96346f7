"""Loaders for the real datasets vendored beside this file (numpy and the standard library only).

Provenance, checksums and citations are in README.md here. Nothing is downloaded.
"""
import gzip
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent


def load_ts(name):
    """Read a UCR/UEA ``.ts.gz`` file: (list of (length, channels) float arrays, str labels)."""
    series, labels, in_data = [], [], False
    with gzip.open(DATA_DIR / f"{name}.ts.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                in_data = line.lower().startswith("@data")
                continue
            *channels, label = line.split(":")
            series.append(np.stack([np.array([float(v) if v != "?" else np.nan
                                              for v in channel.split(",")])
                                    for channel in channels], axis=1))
            labels.append(label.strip())
    return series, np.asarray(labels)


def pre_pad(series, length):
    """Stack variable-length series into (n, length, channels), zeros in front.

    The estimators read the last time step, so padding goes before the data.
    """
    out = np.zeros((len(series), length, series[0].shape[1]))
    for row, values in enumerate(series):
        out[row, length - len(values):] = values[-length:]
    return out


def italy_power_demand():
    """Binary, univariate, length 24: (X_train (67, 24), y_train, X_test (1029, 24), y_test)."""
    train, y_train = load_ts("ItalyPowerDemand_TRAIN")
    test, y_test = load_ts("ItalyPowerDemand_TEST")
    return np.stack(train)[:, :, 0], y_train, np.stack(test)[:, :, 0], y_test


def japanese_vowels(length=29):
    """9 speakers, 12 channels, lengths 7-29, pre-padded: (270, 29, 12) train, (370, 29, 12) test."""
    train, y_train = load_ts("JapaneseVowels_TRAIN")
    test, y_test = load_ts("JapaneseVowels_TEST")
    return pre_pad(train, length), y_train, pre_pad(test, length), y_test


def _csv_column(name):
    with gzip.open(DATA_DIR / f"{name}.csv.gz", "rt") as handle:
        return np.genfromtxt(handle, delimiter=",", skip_header=1, usecols=1)


def sunspots():
    """Yearly sunspot activity, 1700-2008 (309 values)."""
    return _csv_column("sunspots")


def airline():
    """Monthly airline passengers (thousands), 1949-1960 (144 values)."""
    return _csv_column("Airline")


def windows(series, lookback):
    """Sliding windows: X (n - lookback, lookback), target (n - lookback,) = the next value."""
    X = np.lib.stride_tricks.sliding_window_view(series[:-1], lookback)
    return np.ascontiguousarray(X), series[lookback:]
