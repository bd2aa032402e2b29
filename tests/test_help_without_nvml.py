"""`gpuwatch --help` never depends on pynvml: not installed, or a release without the internals
gpuwatch.nvml relies on (an empty module stands for one), every command's help still prints."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs in a fresh interpreter, so pynvml is not already imported by the test session.
PROGRAM = """
import sys, types
sys.modules["pynvml"] = None if sys.argv[1] == "absent" else types.ModuleType("pynvml")
from gpuwatch.cli import main
main(sys.argv[2:], prog_name="gpuwatch")
"""


@pytest.mark.parametrize("pynvml", ["absent", "without-internals"])
@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["status", "--help"], ["--version"]], ids=" ".join)
def test_help_needs_no_pynvml(pynvml, args):
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, pynvml, *args], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert ("gpuwatch, version" if args == ["--version"] else "Usage: gpuwatch") in result.stdout


def test_a_command_that_needs_nvml_still_says_why():
    """The lazy imports only move the failure: a command that samples NVML reports the broken module."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, "without-internals", "status", "--simulate", "inference-host"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "pynvml" in result.stderr
