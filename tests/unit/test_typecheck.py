"""The type check can fail: mypy, with the project's own configuration, on a small file that makes a
cross-module mistake (the kind a package whose imports do not resolve lets through: an attribute the
engine does not have, a str | None where a str is needed), must report each of them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

MISTAKES = '''
from ebpfguard.pipeline.correlate import load_correlator
from ebpfguard.runtime.engine import Engine
from ebpfguard.common.abi import Verdict


def standalone(eng: Engine) -> str:
    eng.correlator = load_correlator(None)
    return Verdict.NONE.label
'''


def test_mypy_finds_a_cross_module_mistake(tmp_path: Path) -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mypy is not installed beside this interpreter (make venv installs it)")
    bad = tmp_path / "mistake.py"
    bad.write_text(MISTAKES)
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--no-incremental", str(bad)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"Engine" has no attribute "correlator"' in out.stdout, out.stdout
    assert 'Incompatible return value type (got "str | None", expected "str")' in out.stdout, out.stdout
