"""The Debian package's sources agree with the unit they package; the build says what it lacks.

Building and installing the package takes minutes and root, so CI does that in
packaging/deb/ci-check (run by .ci/run), not here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gpuwatch import install, unitcheck

ROOT = Path(__file__).resolve().parent.parent
DEB = ROOT / "packaging/deb"
PACKAGED_EXEC = "/usr/bin/gpuwatch"


def test_the_rules_point_the_shipped_unit_at_usr_bin_gpuwatch():
    rules = (DEB / "debian/rules").read_text()
    unit = install.packaged("gpuwatch.service")
    assert f"\nExecStart={install.UNIT_EXEC} " in unit
    assert f"s|^ExecStart={install.UNIT_EXEC} |ExecStart={PACKAGED_EXEC} |" in rules
    packaged = unit.replace(f"ExecStart={install.UNIT_EXEC} ", f"ExecStart={PACKAGED_EXEC} ")
    hidden = unitcheck.hidden_paths(unitcheck.service_settings(packaged))
    # /usr/bin/gpuwatch links into the venv, whose python links to /usr/bin/python3.X: none hidden
    for path in (PACKAGED_EXEC, "/opt/gpuwatch/bin/gpuwatch", "/opt/gpuwatch/bin/python3", "/usr/bin/python3.11"):
        assert unitcheck.hiding(path, hidden) is None, path
    links = (DEB / "debian/gpuwatch.links").read_text().split()
    assert links == ["opt/gpuwatch/bin/gpuwatch", PACKAGED_EXEC.lstrip("/")]


def test_the_package_ships_the_files_of_systemd():
    rules = (DEB / "debian/rules").read_text()
    for name in install.FILES:
        assert f"systemd/{name}" in rules, name
    assert "etc/default/gpuwatch" in rules and "etc/gpuwatch/gpuwatch.toml" in rules


def test_the_build_names_the_tools_it_lacks(tmp_path):
    # A PATH with bash and dirname only: the build stops first thing, naming what to install.
    for tool in ("bash", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [str(tmp_path / "bash"), str(DEB / "build")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "dh_virtualenv" in result.stderr and "apt-get install dh-virtualenv" in result.stderr
    assert not (tmp_path / "dist").exists()
