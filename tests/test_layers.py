"""Layers point down only (docs/ARCHITECTURE.md): a walk over every module's imports, and the
exporter, `status` and analysis importing with no pynvml at all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpuwatch"

LEAVES = ("gpuwatch.records", "gpuwatch.labels")  # import nothing of gpuwatch; anyone may import them
# module prefix -> the gpuwatch modules it may import (besides itself and the leaves); None: no rule
ONLY = {
    "gpuwatch.records": (),
    "gpuwatch.labels": (),
    "gpuwatch.analysis": (),
    "gpuwatch.model": (),
    "gpuwatch.derive": ("gpuwatch.analysis", "gpuwatch.model"),
    "gpuwatch.client": ("gpuwatch.status",),
    "gpuwatch.unitcheck": (),
}
# module prefix -> what it must never import, directly or by a name below it
NEVER = {
    "gpuwatch.exporter": (
        "pynvml",
        "gpuwatch.nvml",
        "gpuwatch.status",
        "gpuwatch.sampler",
        "gpuwatch.session",
        "gpuwatch.sim",
        "gpuwatch.tokens",
        "gpuwatch.runtime",
        "gpuwatch.config",
        "gpuwatch.daemon",
        "gpuwatch.cli",
    ),
    "gpuwatch.status": ("pynvml", "gpuwatch.nvml", "gpuwatch.exporter", "gpuwatch.sampler", "gpuwatch.sim"),
    "gpuwatch.config": ("gpuwatch.exporter.web", "http.server", "gpuwatch.sampler", "gpuwatch.runtime"),
    "gpuwatch.sampler": ("gpuwatch.tokens", "gpuwatch.exporter", "gpuwatch.status", "gpuwatch.sim"),
    "gpuwatch.session": ("gpuwatch.tokens", "gpuwatch.exporter", "gpuwatch.status"),
    "gpuwatch.loop": ("pynvml", "gpuwatch.nvml", "gpuwatch.tokens", "gpuwatch.exporter"),
    "gpuwatch.tokens": ("pynvml", "gpuwatch.nvml", "gpuwatch.sampler", "gpuwatch.exporter", "gpuwatch.status"),
    "gpuwatch.nvml": ("gpuwatch.sampler", "gpuwatch.exporter", "gpuwatch.status", "gpuwatch.tokens", "gpuwatch.sim"),
    "gpuwatch.sim": ("pynvml", "gpuwatch.nvml", "gpuwatch.sampler", "gpuwatch.exporter", "gpuwatch.status"),
    # the live page reads snapshots and the /status document it is handed, never the driver
    "gpuwatch.page": ("pynvml", "gpuwatch.nvml", "gpuwatch.sampler", "gpuwatch.sim", "gpuwatch.tokens"),
    "gpuwatch.k8s": (
        "pynvml",
        "gpuwatch.nvml",
        "gpuwatch.sampler",
        "gpuwatch.exporter",
        "gpuwatch.status",
        "gpuwatch.tokens",
    ),
}
PYNVML_ONLY_IN = "gpuwatch.nvml"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str) -> set[str]:
    """Every module ``source`` imports, anywhere in it (``from a import b`` counts as ``a.b``)."""
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imported: set[str]) -> list[str]:
    """The forbidden edges among ``module``'s imports."""
    out = []
    for name in sorted(imported):
        if _under(name, "pynvml") and not _under(module, PYNVML_ONLY_IN):
            out.append(f"{module} -> {name} (only {PYNVML_ONLY_IN} talks to pynvml)")
        for prefix, never in NEVER.items():
            if _under(module, prefix) and any(_under(name, n) for n in never):
                out.append(f"{module} -> {name} ({prefix} never imports it)")
        for prefix, allowed in ONLY.items():
            if (
                _under(module, prefix)
                and _under(name, "gpuwatch")
                and name != "gpuwatch"
                and not any(_under(name, a) for a in (prefix, *LEAVES, *allowed))
            ):
                out.append(f"{module} -> {name} ({prefix} may import only {', '.join((*LEAVES, *allowed))})")
    return out


def test_no_module_imports_across_its_layer():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        found += violations(module, imports_of(path.read_text(), module))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("gpuwatch.exporter.power", "import pynvml\n"),
        ("gpuwatch.exporter.clocks", "from gpuwatch.nvml.fields import CLOCK_EVENT_REASONS\n"),
        ("gpuwatch.exporter.health", "from gpuwatch.status import to_document\n"),
        ("gpuwatch.model", "from gpuwatch.analysis.health import Verdict\n"),
        ("gpuwatch.analysis.throttle", "def f():\n    from gpuwatch.model import Snapshot\n"),
        ("gpuwatch.config", "from gpuwatch.exporter.web import WebServer\n"),
        ("gpuwatch.sampler", "from gpuwatch.tokens.tracker import TokenTracker\n"),
        ("gpuwatch.status", "from gpuwatch import nvml\n"),
        ("gpuwatch.tokens.tracker", "from ..nvml import reader\n"),
    ],
)
def test_the_walk_catches_a_forbidden_edge(module, source):
    assert violations(module, imports_of(source, module))


def test_allowed_edges_pass_the_walk():
    assert not violations("gpuwatch.exporter.thermal", imports_of("from gpuwatch.model import Snapshot\n", "x"))
    assert not violations("gpuwatch.analysis.health", imports_of("from gpuwatch.records import Verdict\n", "x"))


def test_exporter_status_and_analysis_import_without_pynvml():
    modules = ["gpuwatch.status"] + [
        module_name(path) for folder in ("exporter", "analysis") for path in sorted((PACKAGE / folder).glob("*.py"))
    ]
    script = "import sys\nsys.modules['pynvml'] = None\n" + "".join(f"import {m}\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
