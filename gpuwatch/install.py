"""`gpuwatch install-service`: put the systemd unit, its user and a default config in place.

The files live in the package (``gpuwatch/deploy/``, also ``systemd/`` in the source tree), so an
install from PyPI can set itself up. The unit's ``ExecStart=`` is pointed at the gpuwatch
executable being run; the config and defaults file are never overwritten unless asked to.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from gpuwatch import unitcheck

CONFIG_PATH = "/etc/gpuwatch/gpuwatch.toml"
UNIT_EXEC = "/usr/local/bin/gpuwatch"  # what the shipped unit names; replaced on install
WHAT_TO_DO = (
    "install gpuwatch with the Debian package (to /opt/gpuwatch) or in a venv under /opt "
    "(python3 -m venv /opt/gpuwatch), or pass --force-path if you know the service can run it"
)

# packaged file -> (installed path, overwrite without --force)
FILES = {
    "gpuwatch.service": ("etc/systemd/system/gpuwatch.service", True),
    "gpuwatch.sysusers": ("etc/sysusers.d/gpuwatch.conf", True),
    "gpuwatch.default": ("etc/default/gpuwatch", False),
    "gpuwatch.toml": (CONFIG_PATH.lstrip("/"), False),
}


def packaged(name: str) -> str:
    """The text of a file shipped in ``gpuwatch/deploy``."""
    return resources.files("gpuwatch.deploy").joinpath(name).read_text(encoding="utf-8")


def current_executable() -> str:
    """The ``gpuwatch`` script beside this Python, else the one on PATH, else the shipped default."""
    beside = Path(sys.executable).parent / "gpuwatch"
    if beside.is_file():
        return str(beside)
    return shutil.which("gpuwatch") or UNIT_EXEC


def unit_text(executable: str) -> str:
    """The unit with ``ExecStart=`` pointing at ``executable``."""
    return packaged("gpuwatch.service").replace(f"ExecStart={UNIT_EXEC} ", f"ExecStart={executable} ")


def exec_problem(executable: str) -> str | None:
    """Why the installed unit could not start ``executable`` (hidden by its sandbox, missing), or None."""
    return unitcheck.exec_problem(executable, unit_text(executable))


def install(root: str | Path, executable: str, force: bool = False) -> list[tuple[Path, str]]:
    """Write every file below ``root``; returns ``(path, "wrote" | "kept")`` per file."""
    done: list[tuple[Path, str]] = []
    for name, (relative, overwrite) in FILES.items():
        target = Path(root) / relative
        if target.exists() and not (overwrite or force):
            done.append((target, "kept"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        text = unit_text(executable) if name == "gpuwatch.service" else packaged(name)
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
        done.append((target, "wrote"))
    return done
