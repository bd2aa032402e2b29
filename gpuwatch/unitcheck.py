"""Can a systemd unit start the executable its ``ExecStart=`` names?

``systemd-analyze verify`` accepts a unit whose ``ExecStart=`` lies under a path the unit's own
sandbox hides (a venv under ``/home`` behind ``ProtectHome=yes``, a build under ``/tmp`` behind
``PrivateTmp=yes``), or that does not exist: the service then fails at every start. The hidden paths
are read from the unit's own settings (systemd.exec(5)), so a unit that loosens or tightens its
sandbox is judged by what it says. The executable is followed through symlinks, and a script's
``#!`` interpreter (a venv's ``bin/python``) is checked the same way, since the service needs both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath

_TRUE = {"1", "yes", "true", "on"}
# systemd.exec(5): ProtectHome=yes and =tmpfs leave these empty or inaccessible; =read-only does not.
_HOME_PATHS = ("/home", "/root", "/run/user")
# PrivateTmp=yes gives the service its own, empty /tmp and /var/tmp.
_TMP_PATHS = ("/tmp", "/var/tmp")


@dataclass(frozen=True)
class HiddenPath:
    """A directory the service cannot see, and the unit setting that hides it."""

    path: str
    setting: str


def service_settings(unit_text: str) -> dict[str, list[str]]:
    """The ``[Service]`` section's assignments, in order, per key (an empty assignment resets a list)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if value:
            settings.setdefault(key, []).append(value)
        else:
            settings[key] = []
    return settings


def hidden_paths(settings: dict[str, list[str]]) -> list[HiddenPath]:
    """The directories the unit's sandbox hides from its service."""
    hidden: list[HiddenPath] = []
    protect_home = (settings.get("ProtectHome") or ["no"])[-1].lower()
    if protect_home in _TRUE or protect_home == "tmpfs":
        hidden += [HiddenPath(path, f"ProtectHome={protect_home}") for path in _HOME_PATHS]
    private_tmp = (settings.get("PrivateTmp") or ["no"])[-1].lower()
    if private_tmp in _TRUE or private_tmp == "disconnected":  # systemd 256: a tmpfs, /tmp not shared
        hidden += [HiddenPath(path, f"PrivateTmp={private_tmp}") for path in _TMP_PATHS]
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):
        for value in settings.get(key, []):
            for entry in value.split():
                # "-" and "+" prefix a path (ignore if missing, relative to root); tmpfs options follow ":".
                path = entry.lstrip("-+").split(":", 1)[0]
                if path.startswith("/"):
                    hidden.append(HiddenPath(path.rstrip("/") or "/", f"{key}={entry}"))
    return hidden


def hiding(path: str, hidden: list[HiddenPath]) -> HiddenPath | None:
    """The hidden directory ``path`` lies in, if any."""
    pure = PurePosixPath(path)
    for entry in hidden:
        root = PurePosixPath(entry.path)
        if pure == root or root in pure.parents:
            return entry
    return None


def _interpreter(path: str) -> str | None:
    """The program a ``#!`` script names (the first word after ``#!``), or None for a binary."""
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None


def _hidden_reason(subject: str, path: str, hidden: list[HiddenPath]) -> str | None:
    """Why ``subject`` (naming ``path``) is out of the service's sight, following symlinks."""
    for candidate in dict.fromkeys([path, os.path.realpath(path)]):
        entry = hiding(candidate, hidden)
        if entry is not None:
            via = "" if candidate == path else f" (it is a symlink to {candidate})"
            return f"{subject} is under {entry.path}{via}, which the unit hides from the service ({entry.setting})"
    return None


def exec_problem(executable: str, unit_text: str) -> str | None:
    """Why the unit could not start ``executable``, or None when it can.

    Reads the file system: the executable, where its symlinks lead, and its ``#!`` interpreter.
    """
    if not executable.startswith("/"):
        return f"ExecStart= {executable} is not an absolute path"
    hidden = hidden_paths(service_settings(unit_text))
    reason = _hidden_reason(f"ExecStart= {executable}", executable, hidden)
    if reason is not None:
        return reason
    if not os.path.exists(executable):
        return f"ExecStart= {executable} does not exist"
    if not os.path.isfile(executable) or not os.access(executable, os.X_OK):
        return f"ExecStart= {executable} is not an executable file"
    interpreter = _interpreter(executable)
    if interpreter is None:
        return None
    reason = _hidden_reason(f"the interpreter {interpreter} of ExecStart= {executable}", interpreter, hidden)
    if reason is not None:
        return reason
    if not os.path.isfile(interpreter) or not os.access(interpreter, os.X_OK):
        return f"ExecStart= {executable} names the interpreter {interpreter}, which does not exist or is not executable"
    return None
