"""The package is fully typed: mypy --strict passes on it and on typical user code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import agentvault

HERE = Path(__file__).resolve().parent


def test_py_typed_ships() -> None:
    assert (Path(agentvault.__file__).parent / "py.typed").is_file()


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    package = Path(agentvault.__file__).parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-version",
            "3.10",
            str(package),
            str(HERE / "typing_usage.py"),
        ],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
