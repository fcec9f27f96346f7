"""Every Python example in README.md runs (in a temporary directory)."""
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


def test_readme_examples_run(tmp_path, monkeypatch):
    for module in ("sklearn", "onnx", "dask"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the README examples use {module}")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in BLOCKS:  # later blocks build on earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
