"""``gpuwatch sim-run``: run someone else's NVML program over the simulated driver, in this process.

The simulated library sits beneath pynvml (DESIGN §3), so any Python program that imports pynvml
(gpustat, nvitop, a script of one's own) runs unchanged on top of it, provided it runs in the
process where the library is installed. This module installs a scenario's library, then runs the
program's own entry point here: a console script found on PATH (its ``console_scripts`` entry
point when this environment has one, else the script file itself) or ``-m module``.

A program that loads ``libnvidia-ml.so`` through its own ctypes, or that is not Python, cannot be
run this way; it is refused with a message that says so, before anything runs.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gpuwatch.host import simulated_host
from gpuwatch.sim.clock import ManualClock, SimClock

EXIT_NOT_FOUND = 127  # the shell's "command not found"
EXIT_NOT_RUNNABLE = 126  # the shell's "found but cannot be run"


class ProgramError(Exception):
    """The program cannot be run in-process; ``exit_code`` follows the shell's convention."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Program:
    """How to start a program in this process: ``sys.argv`` for it and the call that runs it."""

    argv: list[str]
    start: Callable[[], object]
    description: str
    path0: str | None = None  # what leads sys.path while it runs, as `python SCRIPT` / `python -m` set it


def resolve(argv: Sequence[str]) -> Program:
    """The program named by ``argv`` (``NAME ARGS...``, ``PATH ARGS...`` or ``-m MODULE ARGS...``)."""
    if not argv:
        raise ProgramError("no program given (gpuwatch sim-run SCENARIO -- PROGRAM [ARGS...])", EXIT_NOT_FOUND)
    if argv[0] == "-m":
        if len(argv) < 2:
            raise ProgramError("-m needs a module name", EXIT_NOT_FOUND)
        module = argv[1]
        # As `python -m`: argv[0] becomes the module's file, the current directory leads sys.path.
        return Program(
            argv=[module, *argv[2:]],
            start=lambda: runpy.run_module(module, run_name="__main__", alter_sys=True),
            description=f"module {module}",
            path0=os.getcwd(),
        )
    name, args = argv[0], list(argv[1:])
    entry_point = None if os.sep in name else _console_script(name)
    if entry_point is not None:
        return Program(argv=[name, *args], start=entry_point.load(), description=f"entry point {entry_point.value}")
    path = Path(name) if os.sep in name else _which(name)
    if path is None or not path.is_file():
        raise ProgramError(f"{name}: not found (not a file, and not on PATH)", EXIT_NOT_FOUND)
    if not _is_python(path):
        raise ProgramError(
            f"{path}: not a Python program; sim-run runs Python programs in its own process, "
            "where the simulated driver sits beneath pynvml",
            EXIT_NOT_RUNNABLE,
        )
    script = str(path)
    return Program(
        argv=[script, *args],
        start=lambda: runpy.run_path(script, run_name="__main__"),
        description=f"script {script}",
        path0=str(path.resolve().parent),
    )


def run(
    scenario: str,
    argv: Sequence[str],
    speed: float = 1.0,
    start_s: float = 0.0,
) -> int:
    """Run the program named by ``argv`` over ``scenario``'s simulated driver; its exit status.

    Simulated time starts at ``start_s`` and runs ``speed`` times as fast as the wall clock; a
    ``speed`` of 0 holds it at ``start_s``, so every reading the program makes is of one instant.
    Raises :class:`ProgramError` (nothing has run) or ``ScenarioError``.
    """
    program = resolve(argv)
    clock: ManualClock | SimClock
    if speed == 0:
        clock = ManualClock()
        clock.advance(start_s)
    else:
        clock = SimClock(speed, start_s=start_s)
    host = simulated_host(scenario, clock=clock)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = list(program.argv)
    if program.path0 is not None:
        sys.path.insert(0, program.path0)
    try:
        return _exit_status(program.start)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        sys.stdout.flush()
        if host.library is not None:
            host.library.close()


def _exit_status(start: Callable[[], object]) -> int:
    """What ``sys.exit(start())`` would exit with, as a console script does."""
    try:
        result = start()
    except SystemExit as exc:
        result = exc.code
    if result is None or isinstance(result, dict):  # runpy's globals: the program ran to its end
        return 0
    if isinstance(result, int):
        return result
    print(result, file=sys.stderr)
    return 1


def _console_script(name: str) -> metadata.EntryPoint | None:
    """The ``console_scripts`` entry point called ``name`` in this environment, if the command on
    PATH is that one (a program of the same name elsewhere on PATH wins, as in a shell)."""
    found = metadata.entry_points(group="console_scripts", name=name)
    if not found:
        return None
    on_path = _which(name)
    here = Path(sys.executable).parent
    if on_path is not None and on_path.parent.resolve() != here.resolve():
        return None
    return next(iter(found))


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def _is_python(path: Path) -> bool:
    """A Python source file: named ``*.py``, or a script whose ``#!`` line names a Python."""
    if path.suffix == ".py":
        return True
    try:
        with path.open("rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first
