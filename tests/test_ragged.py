"""Variable-length input (lists of sequences) and per-step outputs (output="sequence")."""
import pickle

import numpy as np
import pytest

import pylstm
from pylstm import make_windows, pad_sequences, unpad
from pylstm._sequences import bucket_batches, padded_steps
from reference import reference_forward

pytest.importorskip("sklearn")
from pylstm import LSTMClassifier, LSTMRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = dict(hidden_size=6, max_iter=3, random_state=0)


def ragged(rng, n=9, features=3, low=1, high=12, univariate=False):
    """n random sequences with lengths in [low, high], including both ends."""
    lengths = rng.integers(low, high + 1, n)
    lengths[:2] = [low, high]
    shape = (lambda t: (t,)) if univariate else (lambda t: (t, features))
    return [rng.normal(size=shape(int(t))) for t in rng.permutation(lengths)]


# --------------------------------------------------------------------------- helpers
def test_pad_sequences_and_unpad_round_trip(rng):
    seqs = ragged(rng)
    X, lengths = pad_sequences(seqs)
    assert X.shape == (9, 12, 3) and X.dtype == np.float64
    np.testing.assert_array_equal(lengths, [len(s) for s in seqs])
    for row, seq in enumerate(seqs):
        np.testing.assert_array_equal(X[row, :len(seq)], seq)
        assert not X[row, len(seq):].any()
    for back, seq in zip(unpad(X, lengths), seqs):
        np.testing.assert_array_equal(back, seq)
    X32, _ = pad_sequences([[1, 2, 3], [4]], dtype=np.float32)    # 1-D: univariate
    assert X32.dtype == np.float32 and X32.shape == (2, 3, 1)
    np.testing.assert_array_equal(X32[:, :, 0], [[1, 2, 3], [4, 0, 0]])


@pytest.mark.parametrize("seqs, message", [
    ([], "empty"),
    ([np.ones((3, 2)), np.ones((4, 3))], "has 3 features per step, but seqs\\[0\\] has 2"),
    ([np.ones((3, 2)), np.ones((0, 2))], "seqs\\[1\\] has length 0"),
    ([np.ones((3, 2)), np.array([[1.0, np.nan]])], "seqs\\[1\\] must be finite"),
    ([np.ones((3, 2)), np.ones((2, 2, 1))], "must have shape \\(T_i, n_features\\)"),
    (np.ones((2, 3)), "must be a list"),
])
def test_pad_sequences_rejects_bad_input(seqs, message):
    with pytest.raises(ValueError, match=message):
        pad_sequences(seqs)


def test_make_windows_shapes_and_values():
    series = np.arange(10.0)
    X, Y = make_windows(series, 3, 2)
    assert X.shape == (6, 3) and Y.shape == (6, 2)
    np.testing.assert_array_equal(X[2], [2, 3, 4])
    np.testing.assert_array_equal(Y[2], [5, 6])
    X, Y = make_windows(np.stack([series, -series], axis=1), 4)
    assert X.shape == (6, 4, 2) and Y.shape == (6, 1, 2)
    np.testing.assert_array_equal(Y[-1, 0], [9, -9])
    with pytest.raises(ValueError, match="has 10 time steps, but lookback=10 and horizon=1"):
        make_windows(series, 10)
    with pytest.raises(ValueError, match="finite"):
        make_windows(np.array([1.0, np.inf, 2.0, 3.0]), 2)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("Estimator", [LSTMClassifier, LSTMRegressor])
def test_estimators_reject_bad_sequence_lists(Estimator):
    y = [0, 1]
    cases = [([], "X is an empty list"),
             ([np.ones((3, 2)), np.ones((4, 3))], "X\\[1\\] has 3 features per step"),
             ([np.ones((3, 2)), np.ones((0, 2))], "X\\[1\\] has length 0"),
             ([np.ones((3, 2)), np.full((2, 2), np.inf)], "X\\[1\\] must be finite")]
    for X, message in cases:
        with pytest.raises(ValueError, match=message):
            Estimator(**SMALL).fit(X, y)
    model = Estimator(**SMALL).fit([np.ones((3, 2)), np.zeros((5, 2))], y)
    for X, message in cases:
        with pytest.raises(ValueError, match=message):
            model.predict(X)
    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 2"):
        model.predict([np.ones((3, 3)), np.ones((2, 3))])


def test_sequence_targets_must_match_each_sequence():
    X = [np.ones((3, 2)), np.ones((5, 2))]
    with pytest.raises(ValueError, match=r"y\[1\] must have shape \(5,\)"):
        LSTMRegressor(output="sequence", **SMALL).fit(X, [np.ones(3), np.ones(4)])
    with pytest.raises(ValueError, match="y has 1 sequences of targets, but X has 2"):
        LSTMRegressor(output="sequence", **SMALL).fit(X, [np.ones(3)])
    with pytest.raises(ValueError, match=r"y must have shape \(4, 6\)"):
        LSTMClassifier(output="sequence", **SMALL).fit(np.ones((4, 6, 2)), np.arange(4) % 2)
    with pytest.raises(ValueError, match="output must be one of"):
        LSTMRegressor(output="steps").fit(X, [1.0, 2.0])


# --------------------------------------------------------------------------- ragged == alone
@pytest.mark.parametrize("output", ["last", "sequence"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ragged_prediction_equals_predicting_each_sequence_alone(rng, output, bidirectional,
                                                                 dtype):
    seqs = ragged(rng)
    labels = [np.arange(len(s)) % 3 for s in seqs] if output == "sequence" else \
        np.arange(len(seqs)) % 3
    targets = [s[:, :2] for s in seqs] if output == "sequence" else rng.normal(size=(9, 2))
    params = dict(SMALL, num_layers=2, bidirectional=bidirectional, dtype=dtype, output=output)
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    clf = LSTMClassifier(**params).fit(seqs, labels)
    reg = LSTMRegressor(**params).fit(seqs, targets)
    for method in (clf.predict_proba, reg.predict):
        together = method(seqs)
        for seq, result in zip(seqs, together):
            np.testing.assert_allclose(result, method(seq[np.newaxis])[0], atol=tolerance)
    if output == "sequence":
        assert isinstance(together, list)
        assert [r.shape for r in together] == [(len(s), 2) for s in seqs]
        assert [p.shape for p in clf.predict(seqs)] == [(len(s),) for s in seqs]
    else:
        assert clf.predict(seqs).shape == (9,) and reg.predict(seqs).shape == (9, 2)


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_ragged_batch_gradient_is_the_mean_of_gradients_alone(rng, output):
    """Training on a ragged batch does what training on each sequence alone does: no padding leaks in."""
    seqs = ragged(rng, n=6)
    X, lengths = pad_sequences(seqs)
    X[np.arange(X.shape[1]) >= lengths[:, None]] = 7.0    # garbage in the padding: must not matter
    if output == "sequence":
        targets = rng.normal(size=X.shape[:2] + (2,))
        y = [targets[i, :len(s)] for i, s in enumerate(seqs)]
    else:
        y = targets = rng.normal(size=(6, 2))
    reg = LSTMRegressor(hidden_size=5, bidirectional=True, dtype="float64", output=output,
                        max_iter=1, random_state=0).fit(seqs, y)
    weights = rng.uniform(0.5, 2.0, 6)
    loss, grads = reg._batch_gradients(X, lengths, targets, weights)
    # each sequence's loss is a mean over its steps (output="sequence") weighted by its steps
    share = weights * (lengths if output == "sequence" else 1)
    share = share / share.sum()
    expected_loss, expected = 0.0, [np.zeros_like(g) for g in grads]
    for i, seq in enumerate(seqs):
        alone_target = targets[i:i + 1, :len(seq)] if output == "sequence" else targets[i:i + 1]
        loss_i, grads_i = reg._batch_gradients(seq[np.newaxis], None, alone_target,
                                               np.ones(1))
        expected_loss += share[i] * loss_i
        for total, g in zip(expected, grads_i):
            total += share[i] * g
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-13)


def test_list_of_equal_length_sequences_trains_as_the_stacked_array(rng):
    X = rng.normal(size=(20, 7, 2))
    y = X[:, :, 0].sum(axis=1)
    params = dict(hidden_size=5, dtype="float64", max_iter=5, batch_size=8, shuffle=False,
                  random_state=0)
    stacked = LSTMRegressor(**params).fit(X, y)
    listed = LSTMRegressor(**params).fit(list(X), y)
    np.testing.assert_array_equal(listed.lstm_.flat_parameters, stacked.lstm_.flat_parameters)
    np.testing.assert_array_equal(listed.predict(list(X)), stacked.predict(X))
    assert listed.n_features_in_ == stacked.n_features_in_ == 2


def test_univariate_lists_and_feature_counts(rng):
    seqs = ragged(rng, univariate=True)
    y = np.array([s.sum() > 0 for s in seqs])
    clf = LSTMClassifier(**SMALL).fit(seqs, y)
    assert clf.n_features_in_ == 1
    assert clf.predict(seqs).shape == (9,)
    assert clf.predict(np.ones((4, 5))).shape == (4,)          # 2-D X: univariate, any length
    flat = LSTMClassifier(**SMALL).fit(np.ones((4, 5)) * [[1], [-1], [1], [-1]], [1, 0, 1, 0])
    assert flat.n_features_in_ == 5                             # 2-D fit: unchanged semantics
    assert flat.predict(seqs).shape == (9,)                     # univariate sequences still fit
    with pytest.raises(ValueError, match="fitted on univariate series"):
        flat.predict([np.ones((3, 2)), np.ones((4, 2))])


# --------------------------------------------------------------------------- bucketing
def test_bucketing_cuts_padding_and_keeps_every_sequence_once(rng):
    """Random batches of JapaneseVowels-like lengths vs length-bucketed ones (batch 32)."""
    lengths = rng.integers(7, 30, 640)
    random_order = rng.permutation(640)
    random_batches = [random_order[i:i + 32] for i in range(0, 640, 32)]
    bucketed = bucket_batches(lengths, 32, rng)
    np.testing.assert_array_equal(np.sort(np.concatenate(bucketed)), np.arange(640))
    real, unbucketed, padded = lengths.sum(), padded_steps(random_batches, lengths), \
        padded_steps(bucketed, lengths)
    # measured: 11,716 real steps; random batches pad to 18,368 (+57%), buckets to 12,032 (+2.7%)
    assert padded < 1.05 * real < unbucketed
    # the batch order is shuffled, and differs between epochs
    again = bucket_batches(lengths, 32, rng)
    assert not np.array_equal(np.concatenate(bucketed), np.concatenate(again))


def test_fit_on_a_ragged_list_uses_bucketed_trimmed_batches(rng, monkeypatch):
    seqs = ragged(rng, n=40, low=2, high=30)
    seen = []
    original = LSTMRegressor._batch_gradients

    def spy(self, X, lengths, targets, weights):
        seen.append((X.shape[1], lengths.copy()))
        return original(self, X, lengths, targets, weights)

    monkeypatch.setattr(LSTMRegressor, "_batch_gradients", spy)
    LSTMRegressor(hidden_size=4, batch_size=8, max_iter=2, random_state=0).fit(
        seqs, np.ones(40))
    assert len(seen) == 10
    for steps, lengths in seen:
        assert steps == lengths.max()                      # trimmed to its longest sequence
        assert lengths.max() - lengths.min() <= 10         # similar lengths (range is 28)


# --------------------------------------------------------------------------- per-step outputs
@pytest.mark.parametrize("bidirectional", [False, True])
def test_sequence_outputs_match_the_numpy_reference(rng, bidirectional):
    seqs = ragged(rng)
    targets = [np.stack([s[:, 0], s[:, 1] - s[:, 2]], axis=1) for s in seqs]
    reg = LSTMRegressor(hidden_size=5, num_layers=2, bidirectional=bidirectional,
                        output="sequence", dtype="float64", max_iter=3,
                        random_state=0).fit(seqs, targets)
    X, lengths = pad_sequences(seqs)
    out, _, _, _ = reference_forward(reg.lstm_.state_dict(), X, lengths=lengths, num_layers=2,
                                     bidirectional=bidirectional, hidden_size=5)
    expected = out @ reg.head_coef_ + reg.head_intercept_
    for row, predicted in enumerate(reg.predict(seqs)):
        np.testing.assert_allclose(predicted, expected[row, :lengths[row]], rtol=1e-10,
                                   atol=1e-12)
    labels = [(s[:, 0] > 0).astype(int) + (s[:, 1] > 1) for s in seqs]
    clf = LSTMClassifier(hidden_size=5, output="sequence", dtype="float64", max_iter=3,
                         random_state=0).fit(seqs, labels)
    out, _, _, _ = reference_forward(clf.lstm_.state_dict(), X, lengths=lengths, num_layers=1,
                                     bidirectional=False, hidden_size=5)
    logits = out @ clf.head_coef_ + clf.head_intercept_
    proba = np.exp(logits - logits.max(axis=2, keepdims=True))
    proba /= proba.sum(axis=2, keepdims=True)
    for row, predicted in enumerate(clf.predict_proba(seqs)):
        np.testing.assert_allclose(predicted, proba[row, :lengths[row]], rtol=1e-10)


def test_sequence_tagging_learns_a_running_sign(rng):
    """Tag each step with the sign of the running sum so far: needs memory, one label per step."""
    seqs = ragged(rng, n=200, features=1, low=3, high=25)
    tags = [(np.cumsum(s[:, 0]) > 0).astype(int) for s in seqs]
    clf = LSTMClassifier(hidden_size=16, output="sequence", max_iter=40, learning_rate_init=2e-2,
                         batch_size=20, random_state=0).fit(seqs[:150], tags[:150])
    baseline = np.mean(np.concatenate([(s[:, 0] > 0) == (t == 1)            # current step's sign
                                       for s, t in zip(seqs[150:], tags[150:])]))
    accuracy = clf.score(seqs[150:], tags[150:])
    # measured: 0.975 held-out step accuracy (34 epochs); the current step's own sign: 0.660
    assert accuracy > 0.93 > baseline + 0.1


def test_sequence_outputs_on_regular_arrays_and_denoising(rng):
    t = np.linspace(0, 4 * np.pi, 30)
    clean = np.sin(t[None, :] + rng.uniform(0, 2 * np.pi, (120, 1)))
    noisy = clean + rng.normal(scale=0.3, size=clean.shape)
    reg = LSTMRegressor(hidden_size=16, output="sequence", bidirectional=True, max_iter=60,
                        learning_rate_init=2e-2, random_state=0).fit(noisy[:100], clean[:100])
    denoised = reg.predict(noisy[100:])
    assert denoised.shape == (20, 30)
    noise_rmse = np.sqrt(np.mean((noisy[100:] - clean[100:]) ** 2))
    rmse = np.sqrt(np.mean((denoised - clean[100:]) ** 2))
    # measured: RMSE 0.150 after denoising, 0.316 before; R² 0.955
    assert rmse < 0.6 * noise_rmse
    assert reg.score(noisy[100:], clean[100:]) > 0.9


def test_early_stopping_and_sample_weight_with_sequences(rng):
    seqs = ragged(rng, n=40, features=1)
    targets = [np.cumsum(s[:, 0]) for s in seqs]
    reg = LSTMRegressor(hidden_size=6, output="sequence", early_stopping=True, max_iter=5,
                        random_state=0).fit(seqs, targets, sample_weight=rng.uniform(size=40))
    assert len(reg.validation_scores_) == 5
    assert np.isfinite(reg.score(seqs, targets, sample_weight=np.ones(40)))


# --------------------------------------------------------------------------- model files, ONNX
@pytest.mark.parametrize("output", ["last", "sequence"])
def test_save_load_and_pickle_keep_ragged_and_sequence_predictions(rng, tmp_path, output):
    seqs = ragged(rng)
    y = [np.arange(len(s)) % 2 for s in seqs] if output == "sequence" else np.arange(9) % 2
    clf = LSTMClassifier(output=output, **SMALL).fit(seqs, y)
    clf.save(tmp_path / "model.pylstm")
    for copy in (pylstm.load(tmp_path / "model.pylstm"), pickle.loads(pickle.dumps(clf))):
        assert copy.output == output
        for a, b in zip(copy.predict_proba(seqs), clf.predict_proba(seqs)):
            np.testing.assert_array_equal(a, b)


def test_to_onnx_tags_ragged_sequences_as_predict_does():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(n, 1)).astype(np.float32) for n in (3, 5, 2, 4)]
    labels = [(s[:, 0] > 0).astype(int) for s in sequences]
    clf = LSTMClassifier(output="sequence", **SMALL).fit(sequences, labels)
    padded, lengths = pylstm.pad_sequences(sequences)
    assert lengths.tolist() == [3, 5, 2, 4]
    session = ort.InferenceSession(pylstm.to_onnx(clf, with_lengths=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": padded, "lengths": lengths})
    for i, (want_label, want_proba) in enumerate(zip(clf.predict(sequences),
                                                    clf.predict_proba(sequences))):
        assert label[i, :lengths[i]].tolist() == want_label.tolist()
        np.testing.assert_allclose(probabilities[i, :lengths[i]], want_proba, rtol=1e-5, atol=1e-6)