"""Property-based fuzzing of the public API (issue 6).

Every case either returns what the NumPy oracle (``reference.py``) returns for
the same values, or raises ``ValueError``/``TypeError`` whose message names
the argument and the problem. Hypothesis draws configurations, shapes
(including 0 and 1), dtypes (bool, ints, float16/32/64, long double,
big-endian, complex, object, strings), memory layouts (Fortran order, negative
strides, strided views, zero-stride broadcasts, read-only arrays, read-only
memmaps, unaligned buffers, nested lists), values (NaN, +-inf, huge, denormal),
lengths, states and the SIMD level (``PYLSTM_SIMD`` is read per call).

Each suite runs in a child process (this file run as a script), so a segfault
or abort in compiled code fails that suite instead of killing the test run;
the child reports how many cases it ran and how they ended.

``PYLSTM_FUZZ_EXAMPLES`` sets the examples per suite (default 150);
``PYLSTM_FUZZ_SEED`` fixes Hypothesis's seed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = int(os.environ.get("PYLSTM_FUZZ_EXAMPLES", "150"))
SUITES = ("call", "train", "step", "constructor", "parameters", "estimator")
# A float32 kernel rounds differently from the float64 oracle on float32 inputs.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}


# ==========================================================================
# The parent side: one child process per suite
# ==========================================================================
# cases run per suite in this session, for the running total printed by each suite
CASE_COUNTS: dict[str, int] = {}


def run_suite(suite, examples):
    """Run one suite in a child process; its summary, or a test failure saying how it ended."""
    import pylstm

    env = dict(os.environ)
    package_root = str(Path(pylstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.pop("PYLSTM_SIMD", None)  # the child chooses the level per case
    result = subprocess.run([sys.executable, __file__, suite, str(examples)], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        pytest.fail(f"suite {suite!r} crashed the interpreter ({name}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    assert result.returncode == 0, (f"suite {suite!r} failed:\n{result.stdout[-4000:]}\n"
                                    f"{result.stderr[-12000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suite", SUITES)
def test_fuzz(suite, capsys):
    summary = run_suite(suite, EXAMPLES)
    CASE_COUNTS[suite] = summary["cases"]
    with capsys.disabled():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))
        print(f"\nfuzz {suite}: {summary['cases']} cases ({outcomes}); "
              f"{sum(CASE_COUNTS.values())} in {len(CASE_COUNTS)} suites so far")
    assert summary["cases"] >= EXAMPLES // 2
    # The strategies must keep producing cases that compute, not only rejections.
    assert summary["outcomes"].get("ok", 0) >= summary["cases"] // 10


# ==========================================================================
# Bugs the fuzzing found (fixed; kept as regression tests)
# ==========================================================================
def test_numpy_float_dropout_is_accepted():
    import pylstm
    assert pylstm.LSTM(2, 3, num_layers=2, dropout=np.float32(0.25)).dropout == 0.25


def test_load_state_dict_accepts_views_of_its_own_parameters():
    import pylstm
    lstm = pylstm.LSTM(2, 3, bidirectional=True, random_state=0)
    before = lstm.state_dict()
    live = lstm.parameters()
    swapped = dict(live, weight_ih_l0=live["weight_ih_l0_reverse"],
                   weight_ih_l0_reverse=live["weight_ih_l0"])
    lstm.load_state_dict(swapped)
    after = lstm.state_dict()
    np.testing.assert_array_equal(after["weight_ih_l0"], before["weight_ih_l0_reverse"])
    np.testing.assert_array_equal(after["weight_ih_l0_reverse"], before["weight_ih_l0"])


def test_unaligned_buffers_give_the_results_of_aligned_ones():
    """Every entry point, fed one-byte-off buffers (in a child: under UBSan this can abort)."""
    summary = run_suite("unaligned", 0)
    assert summary["outcomes"] == {"ok": summary["cases"]}


def test_validated_arrays_are_aligned():
    """The kernel may assume natural alignment: validation copies unaligned buffers."""
    from pylstm._validation import as_float_array

    for dtype in (np.float32, np.float64):
        raw = np.zeros(3 * 4 * 2 * np.dtype(dtype).itemsize + 1, np.uint8)
        unaligned = raw[1:].view(dtype).reshape(3, 4, 2)
        unaligned[...] = np.arange(24).reshape(3, 4, 2)
        assert not unaligned.flags.aligned
        for value in (unaligned, unaligned.astype(">f8")):
            converted = as_float_array(value, "x", np.dtype(dtype), 3)
            assert converted.flags.aligned and converted.flags.c_contiguous
            np.testing.assert_array_equal(converted, np.arange(24).reshape(3, 4, 2))


# ==========================================================================
# The child side
# ==========================================================================
# Everything below runs in the child; it imports hypothesis and the oracle
# lazily so that collecting this file stays cheap.

SOURCE_DTYPES = ("float64", "float32", "int64", "bool", "int8", "uint8", "int32", "uint64",
                 "float16", "longdouble", ">f4", ">f8", ">i4", "complex64", "complex128",
                 "object", "str")
LAYOUTS = ("C", "F", "reversed", "strided", "read-only", "memmap", "list", "broadcast",
           "unaligned")
SPECIALS = ("nan", "inf", "-inf", "huge", "-huge", "denormal", "zero")
BAD_DTYPES = ("complex64", "complex128", "object", "str")


class Problem:
    """One thing wrong with a call: the exceptions it may raise and what the message must say."""

    def __init__(self, errors, *patterns):
        self.errors = errors
        self.patterns = patterns

    def matches(self, exc):
        message = str(exc)
        return isinstance(exc, self.errors) and all(
            re.search(pattern, message, re.IGNORECASE) for pattern in self.patterns)

    def __repr__(self):
        names = getattr(self.errors, "__name__", None) or "/".join(e.__name__ for e in self.errors)
        return f"{names}{self.patterns}"


class Fuzzer:
    """Draws arguments and predicts what a correct implementation does with them."""

    def __init__(self, draw, st, tmpdir):
        self.draw = draw
        self.st = st
        self.tmpdir = tmpdir
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        # Half the cases are well-formed calls (any real dtype and layout, finite
        # values), so that computing paths get as much fuzzing as refusing ones.
        self.clean = draw(st.booleans())

    def pick(self, good, bad=()):
        """One of ``good``, or in a case that is not clean, one of ``good`` + ``bad``."""
        options = list(good) if self.clean else list(good) + list(bad)
        return self.draw(self.st.sampled_from(options))

    # ------------------------------------------------------------------ arrays
    def values(self, shape, allow_specials=True, scale=None, specials=SPECIALS):
        """float64 values of ``shape`` and a few (flat index, special value) to place in them."""
        st, draw = self.st, self.draw
        if scale is None:
            scale = draw(st.sampled_from([1.0, 1.0, 3.0, 1e-3]))
        values = np.array(self.rng.standard_normal(shape) * scale)  # 0-d gives a float
        placed = []
        if self.clean:
            specials = [kind for kind in specials if kind in ("zero", "denormal")]
        if allow_specials and values.size and specials:
            kinds = draw(st.lists(st.sampled_from(specials), max_size=3))
            placed = [(int(self.rng.integers(values.size)), kind) for kind in kinds]
        return values, placed

    @staticmethod
    def special_value(kind, dtype):
        """A special value as ``dtype`` holds it: ints have no NaN; huge is max / 4."""
        if dtype.kind == "b":
            return kind not in ("zero", "denormal")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return {"inf": info.max, "huge": info.max, "-inf": info.min,
                    "-huge": info.min}.get(kind, 0)
        info = np.finfo(dtype)
        # A quarter of the maximum: a few such terms in one dot product stay finite.
        return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": info.max / 4,
                "-huge": -info.max / 4, "denormal": info.smallest_normal / 4, "zero": 0}[kind]

    @classmethod
    def cast(cls, values, placed, dtype):
        """``values`` in source ``dtype`` (a NumPy dtype, "object" or "str"), specials placed."""
        target = np.dtype(np.float64) if dtype in ("object", "str") else np.dtype(dtype)
        if target.kind == "b":
            out = values != 0
        elif target.kind in "iu":
            info = np.iinfo(target)
            out = np.clip(np.round(values), info.min, info.max).astype(target)
        else:
            out = values.astype(target)
        flat = out.reshape(-1)
        for index, kind in placed:
            flat[index] = cls.special_value(kind, target)
        if dtype == "object":
            return out.astype(object)
        if dtype == "str":
            return out.astype(str)
        return out

    def layout(self, array, layout):
        """``array``'s values in the given memory layout (or as nested lists)."""
        if array.ndim == 0:
            return array  # (indexing a 0-d object array would unwrap its element)
        if layout == "C":
            return np.ascontiguousarray(array)
        if layout == "F":
            return np.asfortranarray(array)
        if layout == "reversed":
            flip = tuple(slice(None, None, -1) for _ in range(array.ndim))
            return array[flip].copy()[flip]
        if layout == "strided":
            wide = np.zeros(tuple(2 * n for n in array.shape), array.dtype)
            inner = tuple(slice(1, None, 2) for _ in range(array.ndim))
            wide[inner] = array
            return wide[inner]
        if layout == "read-only":
            copy = array.copy()
            copy.flags.writeable = False
            return copy
        if layout == "memmap":
            if array.size == 0 or array.dtype.kind in "OU":
                return self.layout(array, "read-only")
            path = os.path.join(self.tmpdir, f"a{self.rng.integers(2**62)}.bin")
            writer = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
            writer[...] = array
            writer.flush()
            del writer
            return np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)
        if layout == "list":
            return array.tolist()
        if layout == "unaligned":
            # C order, but one byte off the natural boundary, as deserialized buffers can be
            if array.dtype.itemsize == 1 or array.dtype.kind in "OU":
                return array
            raw = np.zeros(array.nbytes + 1, np.uint8)
            unaligned = raw[1:].view(array.dtype).reshape(array.shape)
            unaligned[...] = array
            return unaligned
        if layout == "broadcast":
            # the first entry along the longest axis, repeated through a zero stride
            if array.ndim == 0 or array.size == 0:
                return array
            axis = int(np.argmax(array.shape))
            first = np.take(array, [0], axis=axis)
            return np.broadcast_to(first, array.shape)
        raise AssertionError(layout)

    def array(self, shape, *, valid_bias=True, allow_specials=True, dtypes=SOURCE_DTYPES,
              layouts=LAYOUTS, scale=None, specials=SPECIALS):
        """An argument of ``shape`` in a drawn dtype and layout."""
        st, draw = self.st, self.draw
        values, placed = self.values(shape, allow_specials, scale, specials)
        if valid_bias and draw(st.booleans()):
            placed = []
        dtype = self.pick([d for d in dtypes if d not in BAD_DTYPES],
                          [d for d in dtypes if d in BAD_DTYPES])
        layout = draw(st.sampled_from(layouts))
        return self.layout(self.cast(values, placed, dtype), layout)

    # ------------------------------------------------------------------ predictions
    @staticmethod
    def convert(obj, name, layer_dtype, ndim):
        """(converted array or None, problems) for one array argument, as the layer must see it."""
        word = rf"\b{re.escape(name)}\b"
        try:
            array = np.asarray(obj)
        except ValueError:
            return None, [Problem(ValueError, word, "convert|shape|sequence")]
        if array.dtype.kind not in "biuf":
            return None, [Problem((TypeError, ValueError), word, "dtype|complex|real")]
        if ndim is not None and array.ndim != ndim:
            return None, [Problem(ValueError, word, "dimension")]
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(layer_dtype)
        if not np.isfinite(converted).all():
            return None, [Problem(ValueError, word, "finite|too large")]
        return converted, []


def config_strategy(st, bidirectional=None):
    def build(num_layers, bidir, hidden, proj, input_size, dtype, bias):
        return dict(input_size=input_size, hidden_size=hidden, num_layers=num_layers,
                    bidirectional=bidir, proj_size=proj % hidden, dtype=dtype, bias=bias)
    return st.builds(build, st.integers(1, 3), st.booleans() if bidirectional is None
                     else st.just(bidirectional), st.integers(1, 20),
                     st.sampled_from([0, 0, 0, 1, 2, 5]), st.integers(1, 9),
                     st.sampled_from([np.float32, np.float64]),
                     st.sampled_from([True, True, True, False]))


def make_layer(config, seed):
    import pylstm
    return pylstm.LSTM(config["input_size"], config["hidden_size"], config["num_layers"],
                       bidirectional=config["bidirectional"], proj_size=config["proj_size"],
                       bias=config["bias"], dtype=config["dtype"], random_state=seed)


def oracle_params(lstm):
    """The layer's weights for the oracle, which always has biases (zeros if the layer has none)."""
    from reference import param_shapes
    params = lstm.state_dict()
    for name, shape in param_shapes(lstm.input_size, lstm.hidden_size, lstm.num_layers,
                                    lstm.bidirectional, lstm.proj_size).items():
        params.setdefault(name, np.zeros(shape))
    return params


def assert_matches(actual, expected, dtype, what):
    """Entrywise agreement within the dtype's tolerance, relative to max(max |expected|, 1)."""
    expected = np.asarray(expected, dtype=np.float64)
    assert isinstance(actual, np.ndarray), f"{what}: not an ndarray but {type(actual)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: not finite"
    tol = TOLERANCE[np.dtype(dtype)]
    scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1.0)
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert error <= tol * scale, f"{what}: max error {error:.3g} > {tol:g} * {scale:.3g}"


def expect(problems, call, outcomes):
    """Run ``call``: it must raise one of ``problems``, or succeed when there are none."""
    try:
        result = call()
    except (ValueError, TypeError) as exc:
        assert problems, f"valid call raised {type(exc).__name__}: {exc}"
        assert any(problem.matches(exc) for problem in problems), (
            f"raised {type(exc).__name__}: {exc!r}, expected one of {problems}")
        key = f"rejected {type(exc).__name__}"
        outcomes[key] = outcomes.get(key, 0) + 1
        return None
    assert not problems, f"accepted a call it must refuse: {problems}"
    outcomes["ok"] = outcomes.get("ok", 0) + 1
    return result


def state_problems(fuzzer, state, shapes, layer_dtype, name="state"):
    """(converted (h, c) or None, problems) for a state argument."""
    if state is None:
        return None, []
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        return None, [Problem((TypeError, ValueError), name, "tuple|pair|two")]
    converted, problems = [], []
    for label, part, shape in zip("hc", state, shapes):
        array, part_problems = fuzzer.convert(part, name, layer_dtype, 3)
        problems += part_problems
        if array is not None and shape is not None and array.shape != shape:
            problems.append(Problem(ValueError, name, "shape"))
        converted.append(array)
    return (None if problems else tuple(converted)), problems


def draw_state(fuzzer, shapes, specials=SPECIALS):
    """None, a good (h, c), one with a wrong shape, or a bad container."""
    st, draw = fuzzer.st, fuzzer.draw
    kind = fuzzer.pick(["none", "good", "good"], ["wrong shape", "container"])
    if kind == "none":
        return None
    shapes = list(shapes)
    if kind == "wrong shape":
        which = draw(st.integers(0, 1))
        axis = draw(st.integers(0, 2))
        bumped = list(shapes[which])
        bumped[axis] = max(0, bumped[axis] + draw(st.sampled_from([-1, 1])))
        shapes[which] = tuple(bumped)
    h = fuzzer.array(shapes[0], specials=specials)
    c = fuzzer.array(shapes[1], specials=specials)
    if kind == "container":
        return draw(st.sampled_from([
            (h,), (h, c, c), np.zeros((2,) + tuple(shapes[0])), h, "state"]))
    return draw(st.sampled_from([(h, c), [h, c]]))


def lengths_problems(lengths, batch, time):
    if lengths is None:
        return []
    word = r"\blengths\b"
    try:
        array = np.asarray(lengths)
    except ValueError:
        return [Problem(ValueError, word)]
    if array.dtype.kind not in "iuf":
        return [Problem(TypeError, word, "integer")]
    problems = []
    if array.ndim != 1 or array.shape[0] != batch:
        problems.append(Problem(ValueError, word, "shape"))
    elif array.dtype.kind == "f" and not (np.isfinite(array).all()
                                          and (array == np.round(array)).all()):
        problems.append(Problem(TypeError, word, "integer"))
    elif batch and (array.min() < 1 or array.max() > time):
        problems.append(Problem(ValueError, word, r"\[1, "))
    return problems


def draw_lengths(fuzzer, batch, time):
    st, draw = fuzzer.st, fuzzer.draw
    kind = fuzzer.pick(["none", "good", "good"], ["bad"])
    if kind == "none":
        return None
    good = fuzzer.rng.integers(1, max(time, 1) + 1, batch)
    if batch and time:
        good[fuzzer.rng.integers(batch)] = time  # the longest is often the full length
    if kind == "good":
        form = draw(st.sampled_from(["int64", "int32", "uint8", "float", "list", "reversed"]))
        if form == "list":
            return good.tolist()
        if form == "reversed":
            return good[::-1].copy()[::-1]
        if form == "float":
            return good.astype(np.float64)
        return good.astype(form)
    bad = draw(st.sampled_from(["zero", "past time", "negative", "few", "many", "2-d",
                                "fractional", "nan", "strings", "huge float", "bool"]))
    lengths = good.astype(np.float64)
    if bad in ("zero", "past time", "negative", "fractional", "nan", "huge float") and batch:
        lengths[fuzzer.rng.integers(batch)] = {"zero": 0, "past time": time + 1, "negative": -1,
                                               "fractional": 1.5, "nan": np.nan,
                                               "huge float": 1e20}[bad]
        return lengths if bad in ("fractional", "nan", "huge float") else lengths.astype(np.int64)
    if bad == "few":
        return good[:-1]
    if bad == "many":
        return np.append(good, 1)
    if bad == "2-d":
        return good[np.newaxis]
    if bad == "strings":
        return good.astype(str)
    if bad == "bool":
        return good > 0
    return good


def set_level(fuzzer, levels):
    level = fuzzer.draw(fuzzer.st.sampled_from(levels))
    os.environ["PYLSTM_SIMD"] = level
    return level


def available_levels():
    from pylstm import _kernel
    return [name for name, level in (("portable", 0), ("avx2", 1), ("avx512", 2))
            if level <= _kernel.cpu_level()]


# ------------------------------------------------------------------ suites
def suite_call(st, fuzzer, outcomes, levels):
    """``LSTM.__call__``: x, state and lengths of every kind."""
    from reference import reference_forward
    draw = fuzzer.draw
    config = draw(config_strategy(st))
    set_level(fuzzer, levels)
    lstm = make_layer(config, draw(st.integers(0, 2**31 - 1)))
    dtype = lstm.dtype
    batch = fuzzer.pick([1, 2, 3, 4, 5, 7, 13], [0])
    time = fuzzer.pick([1, 2, 3, 5, 9], [0])
    features = fuzzer.pick([config["input_size"]], [0, config["input_size"] + 1])
    shape = fuzzer.pick([(batch, time, features)], [(batch, features),
                                                    (batch, time, features, 1)])
    x = fuzzer.array(shape)
    D, P, H = lstm.num_directions, lstm.output_size, lstm.hidden_size
    shapes = ((lstm.num_layers * D, batch, P), (lstm.num_layers * D, batch, H))
    state = draw_state(fuzzer, shapes)
    lengths = draw_lengths(fuzzer, batch, time)

    x_conv, problems = fuzzer.convert(x, "x", dtype, 3)
    if x_conv is not None:
        if x_conv.shape[2] != config["input_size"]:
            problems.append(Problem(ValueError, r"\bx\b", "features"))
        if x_conv.shape[0] == 0 or x_conv.shape[1] == 0:
            problems.append(Problem(ValueError, r"\bx\b", "at least one|empty"))
    state_conv, more = state_problems(fuzzer, state, shapes if x_conv is not None else
                                      (None, None), dtype)
    problems += more
    problems += lengths_problems(lengths, batch, time)
    arguments = [x, lengths] + (list(state) if isinstance(state, (tuple, list)) else [state])
    copies = [np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in arguments]
    result = expect(problems, lambda: lstm(x, state=state, lengths=lengths), outcomes)
    for argument, copy in zip(arguments, copies):
        if copy is None:
            continue
        if copy.dtype.kind == "O":  # NaN != NaN, and isnan does not take objects
            unchanged = [repr(v) for v in argument.ravel()] == [repr(v) for v in copy.ravel()]
        else:
            unchanged = np.array_equal(argument, copy, equal_nan=copy.dtype.kind in "fc")
        assert unchanged, "the call modified its input"
    if result is None:
        return
    out, (h_n, c_n) = result
    h0, c0 = state_conv if state_conv is not None else (None, None)
    ref_lengths = None if lengths is None else np.asarray(lengths).astype(np.int64)
    expected = reference_forward(oracle_params(lstm), x_conv, h0, c0, ref_lengths,
                                 num_layers=lstm.num_layers, bidirectional=lstm.bidirectional,
                                 hidden_size=H, proj_size=lstm.proj_size)
    for what, actual, wanted in zip(("out", "h_n", "c_n"), (out, h_n, c_n), expected[:3]):
        assert_matches(actual, wanted, dtype, what)


def suite_train(st, fuzzer, outcomes, levels):
    """``forward_train`` + ``backward``: gradients of every input against the oracle's BPTT."""
    from reference import reference_backward, reference_forward
    draw = fuzzer.draw
    config = draw(config_strategy(st))
    set_level(fuzzer, levels)
    lstm = make_layer(config, draw(st.integers(0, 2**31 - 1)))
    dtype = lstm.dtype
    batch = draw(st.sampled_from([1, 2, 3, 4, 5, 7]))
    time = draw(st.sampled_from([1, 2, 3, 5]))
    D, P, H = lstm.num_directions, lstm.output_size, lstm.hidden_size
    shapes = ((lstm.num_layers * D, batch, P), (lstm.num_layers * D, batch, H))
    # Inputs are valid here (call covers bad ones); the gradients get every treatment.
    # No huge values: saturated gates leave gradients that float32 rounds to other tiny numbers.
    x = fuzzer.array((batch, time, config["input_size"]), allow_specials=False,
                     dtypes=("float64", "float32", "int8", "float16", ">f8"))
    state = draw(st.sampled_from([None, "random"]))
    if state == "random":
        state = tuple(fuzzer.values(shape, False)[0].astype(dtype) for shape in shapes)
    lengths = draw_lengths(fuzzer, batch, time)
    if lengths_problems(lengths, batch, time):
        lengths = None
    out, (h_n, c_n), cache = lstm.forward_train(x, state=state, lengths=lengths)

    out_shape = (batch, time, D * P)
    grad_shape = fuzzer.pick([out_shape, None], [(batch, time + 1, D * P), (batch, time)])
    # Huge gradients would overflow float32 sums legitimately: non-finite ones are the point.
    finite_free = ("nan", "inf", "-inf", "denormal", "zero")
    grad_output = None if grad_shape is None else fuzzer.array(
        grad_shape, dtypes=("float64", "float32", "float16", "int8", ">f4", "complex128",
                            "object"), specials=finite_free)
    grad_state = draw_state(fuzzer, shapes, specials=finite_free)

    problems = []
    grad_out_conv = None
    if grad_output is not None:
        grad_out_conv, problems = fuzzer.convert(grad_output, "grad_output", dtype, 3)
        if grad_out_conv is not None and grad_out_conv.shape != out_shape:
            problems.append(Problem(ValueError, "grad_output", "shape"))
    grad_state_conv, more = state_problems(fuzzer, grad_state, shapes, dtype, "grad_state")
    problems += more
    grads = expect(problems, lambda: lstm.backward(cache, grad_output, grad_state), outcomes)
    if grads is None:
        # a refused call must leave the cache usable
        lstm.backward(cache)
        return
    try:
        lstm.backward(cache)
        raise AssertionError("a cache was accepted twice")
    except ValueError as exc:
        assert re.search("already|once|used", str(exc)), exc

    params = oracle_params(lstm)
    x_ref = np.asarray(x).astype(dtype)
    h0, c0 = state if state is not None else (None, None)
    ref_lengths = None if lengths is None else np.asarray(lengths).astype(np.int64)
    ref_out, ref_h, ref_c, tape = reference_forward(
        params, x_ref, h0, c0, ref_lengths, num_layers=lstm.num_layers,
        bidirectional=lstm.bidirectional, hidden_size=H, proj_size=lstm.proj_size)
    for what, actual, wanted in (("out", out, ref_out), ("h_n", h_n, ref_h), ("c_n", c_n, ref_c)):
        assert_matches(actual, wanted, dtype, what)
    grad_h_n, grad_c_n = grad_state_conv if grad_state_conv is not None else (None, None)
    g_out = np.zeros(out_shape) if grad_out_conv is None else grad_out_conv
    g_x, (g_h0, g_c0), g_params = reference_backward(params, tape, g_out, grad_h_n, grad_c_n)
    assert_matches(grads.input, g_x, dtype, "grad input")
    assert_matches(grads.state[0], g_h0, dtype, "grad h0")
    assert_matches(grads.state[1], g_c0, dtype, "grad c0")
    for name, value in grads.params.items():
        assert_matches(value, g_params[name], dtype, f"grad {name}")


def suite_step(st, fuzzer, outcomes, levels):
    """``LSTM.step``: one streaming step against the oracle's step."""
    from reference import reference_step
    draw = fuzzer.draw
    config = draw(config_strategy(st, bidirectional=fuzzer.pick([False], [True])))
    set_level(fuzzer, levels)
    lstm = make_layer(config, draw(st.integers(0, 2**31 - 1)))
    dtype = lstm.dtype
    batch = fuzzer.pick([1, 2, 3, 4, 6, 7, 13], [0])
    features = fuzzer.pick([config["input_size"]], [config["input_size"] + 1])
    shape = fuzzer.pick([(batch, features)], [(batch, 1, features), (features,)])
    x_t = fuzzer.array(shape)
    L, P, H = lstm.num_layers, lstm.output_size, lstm.hidden_size
    shapes = ((L, batch, P), (L, batch, H))
    state = draw_state(fuzzer, shapes)

    problems = []
    if lstm.bidirectional:
        problems.append(Problem(ValueError, "bidirectional"))
    x_conv, more = fuzzer.convert(x_t, "x_t", dtype, 2)
    problems += more
    if x_conv is not None:
        if x_conv.shape[1] != config["input_size"]:
            problems.append(Problem(ValueError, r"\bx_t\b", "features"))
        if x_conv.shape[0] == 0:
            problems.append(Problem(ValueError, r"\bx_t\b", "at least one|empty"))
    state_conv, more = state_problems(fuzzer, state, shapes if x_conv is not None else
                                      (None, None), dtype)
    problems += more
    copies = [np.array(part, copy=True) for part in state] if isinstance(state, tuple) \
        and len(state) == 2 else None
    result = expect(problems, lambda: lstm.step(x_t, state), outcomes)
    if result is None:
        return
    y, (h, c) = result
    h0, c0 = state_conv if state_conv is not None else (np.zeros(shapes[0]), np.zeros(shapes[1]))
    ref_y, (ref_h, ref_c) = reference_step(oracle_params(lstm), x_conv, h0, c0, num_layers=L,
                                           hidden_size=H, proj_size=lstm.proj_size)
    assert_matches(y, ref_y, dtype, "y_t")
    assert_matches(h, ref_h, dtype, "h")
    assert_matches(c, ref_c, dtype, "c")
    if copies is not None:
        for before, after in zip(copies, state):
            np.testing.assert_array_equal(np.asarray(after), before, "step modified its state")


def suite_constructor(st, fuzzer, outcomes, levels):
    """``LSTM(...)``: hyperparameters of every type, including absurd sizes."""
    import pylstm
    draw = fuzzer.draw
    small = st.integers(1, 6)
    # 4 * hidden_size * max(input_size, hidden_size) > 2**31 - 1 whatever the other size
    absurd = st.sampled_from([2**29, 2**31, 2**40, 10**12])
    odd = st.sampled_from([0, -1, True, False, 2.0, 2.5, "3", None, np.int32(3), np.uint8(2),
                           np.int64(4)])
    size = small if fuzzer.clean else st.one_of(small, small, small, absurd, odd)
    input_size, hidden_size = draw(size), draw(size)
    # num_layers never absurd: LSTM(1, 1, num_layers=10**7) is a legal 1 GiB model
    num_layers = draw(st.integers(1, 3) if fuzzer.clean else st.one_of(st.integers(1, 3), odd))
    proj_size = draw(st.sampled_from([0, 0, 1, 2]) if fuzzer.clean
                     else st.one_of(st.just(0), st.integers(0, 6), odd))
    dropout = fuzzer.pick([0.0, 0.5, 0, np.float64(0.2), np.float32(0.25)],
                          [1, 1.0, -0.1, np.nan, np.inf, "0.1", None, True, False])
    dtype = fuzzer.pick([np.float32, np.float64, "float32", "f8", np.dtype("<f4")],
                        [np.int32, "complex128", "float16", object, "nonsense", int])
    random_state = fuzzer.pick([0, 1, None, 2**40, np.random.default_rng(0)], [-1, 1.5, "seed"])

    def is_int(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    problems = []
    for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                             ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
        if not is_int(value):
            problems.append(Problem(TypeError, name, "int"))
        elif value < low:
            problems.append(Problem(ValueError, name, str(low)))
    sizes_ok = not problems
    if sizes_ok and proj_size >= hidden_size:
        problems.append(Problem(ValueError, "proj_size"))
    # any real number in [0, 1), as torch, which also refuses a bool
    if isinstance(dropout, bool) or not (isinstance(dropout, (int, float, np.floating))
                                         and 0 <= dropout < 1):
        problems.append(Problem(ValueError, "dropout"))
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    # (a None here would compare equal to float64, as np.dtype(None) is float64)
    if resolved is None or resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        problems.append(Problem(TypeError, "dtype"))
    if random_state in (-1, 1.5, "seed"):
        problems.append(Problem(ValueError, "random_state"))
    if sizes_ok:
        width = max(int(input_size), int(hidden_size))
        if 4 * int(hidden_size) * width > 2**31 - 1:
            problems.append(Problem(ValueError, "2\\*\\*31|BLAS"))
        # proj_size >= hidden_size is refused anyway; otherwise sizes stay small
    layer = expect(problems, lambda: pylstm.LSTM(
        input_size, hidden_size, num_layers, proj_size=proj_size, dropout=dropout, dtype=dtype,
        random_state=random_state), outcomes)
    if layer is not None:
        out, _ = layer(np.ones((1, 2, int(input_size))))
        assert out.shape == (1, 2, int(proj_size) or int(hidden_size))
        assert np.isfinite(out).all()


def suite_parameters(st, fuzzer, outcomes, levels):
    """``load_state_dict`` and the ``flat_parameters`` setter with values of every kind."""
    from reference import reference_forward
    draw = fuzzer.draw
    config = draw(config_strategy(st))
    set_level(fuzzer, levels)
    lstm = make_layer(config, draw(st.integers(0, 2**31 - 1)))
    dtype = lstm.dtype
    before = lstm.state_dict()
    problems = []
    if draw(st.booleans()):
        state_dict = {}
        for name, value in before.items():
            shape = value.shape
            if not fuzzer.clean and draw(st.integers(0, 9)) == 0:
                shape = shape[:-1] + (shape[-1] + 1,)
            # moderate values: the kernel is not asked to survive 1e38 weights
            state_dict[name] = fuzzer.array(shape, valid_bias=True, scale=0.5,
                                            dtypes=("float64", "float32", "float16", "int8",
                                                    ">f8", "bool", "complex64", "object"))
            converted, more = fuzzer.convert(state_dict[name], name, dtype, None)
            if converted is not None and converted.shape != value.shape:
                more.append(Problem(ValueError, re.escape(name), "shape"))
            problems += more
        edit = fuzzer.pick(["none"], ["none", "missing", "unexpected"])
        if edit == "missing":
            state_dict.pop(next(iter(state_dict)))
            problems.append(Problem(ValueError, "missing"))
        elif edit == "unexpected":
            state_dict["weight_xx_l9"] = np.zeros(3)
            problems.append(Problem(ValueError, "unexpected"))
        if not fuzzer.clean and draw(st.integers(0, 9)) == 0:
            state_dict = list(state_dict.items())
            problems = [Problem(TypeError, "state_dict|mapping")]
        expect(problems, lambda: lstm.load_state_dict(state_dict), outcomes)
        if not problems:
            expected_params = {name: np.asarray(value).astype(dtype)
                               for name, value in state_dict.items()}
    else:
        n = sum(value.size for value in before.values())
        shape = fuzzer.pick([(n,)], [(n + 1,), (n, 1), ()])
        value = fuzzer.array(shape, scale=0.5, dtypes=("float64", "float32", "float16", "int8",
                                                        "complex64", "object"))
        converted, problems = fuzzer.convert(value, "flat_parameters", dtype, 1)
        if converted is not None and converted.shape != (n,):
            problems.append(Problem(ValueError, "flat_parameters", "shape"))

        def assign():
            lstm.flat_parameters = value
        expect(problems, assign, outcomes)
        expected_params = None
        if not problems:
            offsets = np.cumsum([0] + [v.size for v in before.values()])
            expected_params = {name: converted[offsets[i]:offsets[i + 1]].reshape(v.shape)
                               for i, (name, v) in enumerate(before.items())}
    # A refused load leaves every weight as it was; an accepted one is what inference uses.
    if problems:
        for name, value in lstm.state_dict().items():
            np.testing.assert_array_equal(value, before[name], f"refused load changed {name}")
        return
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(value, expected_params[name], f"{name} not loaded")
    x = fuzzer.values((3, 4, config["input_size"]), False)[0].astype(dtype)
    out, _ = lstm(x)
    reference = reference_forward(oracle_params(lstm), x, num_layers=lstm.num_layers,
                                  bidirectional=lstm.bidirectional,
                                  hidden_size=lstm.hidden_size, proj_size=lstm.proj_size)
    assert_matches(out, reference[0], dtype, "out after loading")


_ESTIMATORS = {}


def fitted_estimators():
    """A fitted classifier (3-D X, 3 features) and regressor (2-D X), fitted once per child."""
    if not _ESTIMATORS:
        import warnings

        from pylstm import LSTMClassifier, LSTMRegressor
        rng = np.random.default_rng(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X3 = rng.standard_normal((20, 5, 3))
            _ESTIMATORS["classifier"] = LSTMClassifier(hidden_size=4, max_iter=3, random_state=0
                                                       ).fit(X3, X3[:, -1, 0] > 0)
            X2 = rng.standard_normal((20, 6))
            _ESTIMATORS["regressor"] = LSTMRegressor(hidden_size=4, max_iter=3, random_state=0
                                                     ).fit(X2, X2.sum(axis=1))
    return _ESTIMATORS


def suite_estimator(st, fuzzer, outcomes, levels):
    """``predict`` of fitted estimators on X of every kind: the clean result, or a clear refusal."""
    draw = fuzzer.draw
    set_level(fuzzer, levels)
    kind = draw(st.sampled_from(["classifier", "regressor"]))
    model = fitted_estimators()[kind]
    n = fuzzer.pick([1, 2, 5], [0])
    time = fuzzer.pick([1, 4, 6], [0])
    if kind == "classifier":
        shape = fuzzer.pick([(n, time, 3)], [(n, time, 2), (n, time)])
    else:
        shape = fuzzer.pick([(n, 6), (n, 6, 1)], [(n, 5), (n, 6, 2)])
    X = fuzzer.array(shape, layouts=("C", "F", "reversed", "strided", "read-only", "memmap",
                                     "list"))
    array = np.asarray(X)
    dtype = model.lstm_.dtype
    clean = None
    # scikit-learn also converts object arrays and numeric strings: those may go either way
    if array.dtype.kind != "c" and array.size:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                converted = array.astype(dtype)
        except (ValueError, TypeError):
            converted = None
        if converted is not None and np.isfinite(converted).all():
            clean = converted
    strict = array.dtype.kind in "biuf"
    if kind == "classifier":
        must_work = strict and clean is not None and clean.ndim == 3 and clean.shape[2] == 3
    else:
        must_work = strict and clean is not None and clean.shape[1:] in ((6,), (6, 1))
    try:
        predicted = model.predict(X)
    except (ValueError, TypeError) as exc:
        assert not must_work, f"valid X refused: {type(exc).__name__}: {exc}"
        key = f"rejected {type(exc).__name__}"
        outcomes[key] = outcomes.get(key, 0) + 1
        return
    assert clean is not None, f"accepted an X it must refuse (dtype {array.dtype})"
    outcomes["ok"] = outcomes.get("ok", 0) + 1
    expected = model.predict(np.ascontiguousarray(clean))
    if kind == "classifier":
        np.testing.assert_array_equal(predicted, expected)
    else:
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-12)


def unaligned_copy(array):
    """``array``'s values in a C-ordered buffer one byte off its natural alignment."""
    raw = np.zeros(array.nbytes + 1, np.uint8)
    copy = raw[1:].view(array.dtype).reshape(array.shape)
    copy[...] = array
    assert not copy.flags.aligned
    return copy


def run_unaligned():
    """Each entry point on unaligned buffers gives bitwise what it gives on aligned ones."""
    outcomes = {"ok": 0}
    rng = np.random.default_rng(0)
    for level in available_levels():
        os.environ["PYLSTM_SIMD"] = level
        for dtype in (np.float32, np.float64):
            lstm = make_layer(dict(input_size=3, hidden_size=9, num_layers=2, bidirectional=False,
                                   proj_size=0, dtype=dtype, bias=True), 0)
            x = rng.standard_normal((5, 4, 3)).astype(dtype)
            state = tuple(rng.standard_normal(s).astype(dtype) for s in ((2, 5, 9), (2, 5, 9)))
            odd_state = tuple(unaligned_copy(part) for part in state)
            pairs = [
                (lambda: lstm(x, state), lambda: lstm(unaligned_copy(x), odd_state)),
                # step's fast path takes a streaming loop's own arrays as they are
                (lambda: lstm.step(x[:, 0].copy(), state),
                 lambda: lstm.step(unaligned_copy(x[:, 0]), odd_state)),
                (lambda: lstm.step(x[:, 0].copy(), state),
                 lambda: lstm.step(x[:, 0].copy(), odd_state)),
                (lambda: lstm.backward(lstm.forward_train(x)[2], np.ones((5, 4, 9), dtype)).flat,
                 lambda: lstm.backward(lstm.forward_train(unaligned_copy(x))[2],
                                       unaligned_copy(np.ones((5, 4, 9), dtype))).flat),
            ]
            for index, (aligned, odd) in enumerate(pairs):
                expected = np.concatenate([np.ravel(v) for v in _arrays(aligned())])
                got = np.concatenate([np.ravel(v) for v in _arrays(odd())])
                assert np.array_equal(expected, got), f"case {index}, {level}, {dtype.__name__}"
                outcomes["ok"] += 1
    print(json.dumps({"cases": outcomes["ok"], "outcomes": outcomes}))


def _arrays(result):
    if isinstance(result, np.ndarray):
        return [result]
    return [array for item in result for array in _arrays(item)]


def run_child(suite, examples):
    if suite == "unaligned":
        return run_unaligned()
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    body = globals()[f"suite_{suite}"]
    levels = available_levels()
    outcomes: dict[str, int] = {}
    tmpdir = tempfile.mkdtemp(prefix="pylstm-fuzz-")

    @settings(max_examples=examples, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        fuzzer = Fuzzer(data.draw, st, tmpdir)
        body(st, fuzzer, outcomes, levels)

    if os.environ.get("PYLSTM_FUZZ_SEED"):
        fuzz = seed(int(os.environ["PYLSTM_FUZZ_SEED"]))(fuzz)
    try:
        fuzz()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    print(json.dumps({"cases": sum(outcomes.values()), "outcomes": outcomes}))


if __name__ == "__main__":
    import warnings

    # Conversions of huge values warn on the way to the errors under test.
    warnings.simplefilter("ignore", RuntimeWarning)
    run_child(sys.argv[1], int(sys.argv[2]))
