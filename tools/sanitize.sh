#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer and
# run the test suite against it (issue 6). `make sanitize` calls this.
#
# The build happens in a scratch copy of the tree, so the in-place modules of
# the working copy are never replaced. Python itself is not instrumented, so
# the ASan runtime is preloaded; pymalloc is switched off so that small
# PyMem_Malloc buffers go through ASan's malloc too. Leak detection is off:
# the interpreter never frees its arenas, so every run would "leak".
# Any sanitizer report aborts the process (-fno-sanitize-recover), so a
# report always surfaces as a failed or crashed test.
#
# Usage: tools/sanitize.sh [pytest arguments]   (default: tests -q)
# Environment: PYTHON (default python3), SANITIZE_DIR (default: a new
# directory under /tmp, removed afterwards unless KEEP=1).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
# an absolute path: the build and the tests run from the scratch copy
if [[ "$python" == */* ]]; then python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python"); fi
work=${SANITIZE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pylstm-sanitize.XXXXXX")}
if [[ -z "${SANITIZE_DIR:-}" && "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
fi

# Sources and tests only: no build products, caches or compiled modules.
mkdir -p "$work"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.so' --exclude='./src/*.c' --exclude=__pycache__ --exclude=.hypothesis \
    --exclude=.pytest_cache --exclude='*.egg-info' -cf - . | tar -C "$work" -xf -

flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
echo "sanitize: building in $work with $flags" >&2
(cd "$work" && CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --inplace >build.log 2>&1) || {
    tail -n 40 "$work/build.log" >&2
    exit 1
}

libasan=$(gcc -print-file-name=libasan.so)
if [[ ! -e "$libasan" ]]; then
    echo "sanitize: libasan.so not found (gcc -print-file-name=libasan.so gave $libasan)" >&2
    exit 1
fi

cd "$work"
export LD_PRELOAD="$libasan"
# allocator_may_return_null: a request too large for memory is NumPy's MemoryError,
# which some tests expect, not an ASan abort.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:print_summary=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# pytest's default capture swaps file descriptor 2 for a file, and a process
# the sanitizer aborts never shows it: capture at the sys level only, so a
# report written to fd 2 reaches the terminal (and the CI log).
export PYTEST_ADDOPTS="--capture=sys${PYTEST_ADDOPTS:+ $PYTEST_ADDOPTS}"
export PYTHONMALLOC=malloc
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
# Fail loudly if the tests would import anything but the instrumented build.
"$python" - <<'PY'
import os, pylstm._kernel as kernel
assert kernel.__file__.startswith(os.getcwd()), f"not the sanitized build: {kernel.__file__}"
print(f"sanitize: testing {kernel.__file__}")
PY
if [[ $# -eq 0 ]]; then
    set -- tests -q -p no:cacheprovider
fi
"$python" -m pytest "$@"
