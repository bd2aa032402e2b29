"""install-service refuses an ExecStart= the unit could not start; the hidden paths come from the unit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gpuwatch import install, unitcheck

SHIPPED = install.packaged("gpuwatch.service")
# The shipped sandbox without PrivateTmp=, so files made under pytest's tmp_path (in /tmp) are visible.
WITHOUT_PRIVATE_TMP = SHIPPED.replace("PrivateTmp=yes\n", "")


def gpuwatch(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", *args], capture_output=True, text=True, timeout=30, env=environ
    )


def script(path, interpreter="/bin/sh", mode=0o755):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{interpreter}\nexit 0\n")
    path.chmod(mode)
    return path


def test_the_issue_example_exits_78_with_one_line_naming_the_path(tmp_path):
    result = gpuwatch("install-service", "--root", str(tmp_path), "--bin", "/home/someone/.venv/bin/gpuwatch")
    assert result.returncode == 78
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "/home/someone/.venv/bin/gpuwatch" in lines[0]
    assert "ProtectHome=yes" in lines[0] and "/opt" in lines[0] and "--force-path" in lines[0]
    assert not (tmp_path / "etc").exists()  # nothing written


@pytest.mark.parametrize(
    ("executable", "hidden", "setting"),
    [
        ("/home/someone/.venv/bin/gpuwatch", "/home", "ProtectHome=yes"),
        ("/root/.local/bin/gpuwatch", "/root", "ProtectHome=yes"),
        ("/run/user/1000/gpuwatch", "/run/user", "ProtectHome=yes"),
        ("/tmp/build/bin/gpuwatch", "/tmp", "PrivateTmp=yes"),
        ("/var/tmp/gpuwatch", "/var/tmp", "PrivateTmp=yes"),
    ],
)
def test_paths_the_shipped_sandbox_hides_are_refused(executable, hidden, setting):
    problem = unitcheck.exec_problem(executable, SHIPPED)
    assert problem is not None
    assert executable in problem and f"under {hidden}," in problem and setting in problem


def test_hidden_paths_follow_the_units_own_settings():
    hidden = unitcheck.hidden_paths(unitcheck.service_settings(SHIPPED))
    assert {h.path for h in hidden} == {"/home", "/root", "/run/user", "/tmp", "/var/tmp"}
    loose = unitcheck.service_settings(SHIPPED.replace("ProtectHome=yes", "ProtectHome=read-only"))
    assert {h.path for h in unitcheck.hidden_paths(loose)} == {"/tmp", "/var/tmp"}
    disconnected = unitcheck.service_settings("[Service]\nPrivateTmp=disconnected\nProtectHome=tmpfs\n")
    assert {h.path for h in unitcheck.hidden_paths(disconnected)} == {"/home", "/root", "/run/user", "/tmp", "/var/tmp"}
    # a later empty assignment resets a list; a path prefixed "-" still counts; tmpfs options are cut off
    extra = "[Service]\nInaccessiblePaths=/srv\nInaccessiblePaths=\nInaccessiblePaths=-/data /mnt\nTemporaryFileSystem=/var/lib:ro\n"
    assert [h.path for h in unitcheck.hidden_paths(unitcheck.service_settings(extra))] == ["/data", "/mnt", "/var/lib"]
    # settings in other sections are not the service's
    assert unitcheck.hidden_paths(unitcheck.service_settings("[Unit]\nProtectHome=yes\n")) == []


def test_a_sibling_with_a_shared_prefix_is_not_hidden():
    hidden = [unitcheck.HiddenPath("/home", "ProtectHome=yes")]
    assert unitcheck.hiding("/homework/gpuwatch", hidden) is None
    assert unitcheck.hiding("/home", hidden) is not None


def test_missing_not_executable_and_relative_paths_are_refused(tmp_path):
    assert "does not exist" in unitcheck.exec_problem(str(tmp_path / "nope"), WITHOUT_PRIVATE_TMP)
    plain = script(tmp_path / "plain", mode=0o644)
    assert "not an executable file" in unitcheck.exec_problem(str(plain), WITHOUT_PRIVATE_TMP)
    assert "not an executable file" in unitcheck.exec_problem(str(tmp_path), WITHOUT_PRIVATE_TMP)
    assert "not an absolute path" in unitcheck.exec_problem("bin/gpuwatch", WITHOUT_PRIVATE_TMP)


def test_an_executable_that_can_run_passes(tmp_path):
    good = script(tmp_path / "opt/gpuwatch/bin/gpuwatch")
    assert unitcheck.exec_problem(str(good), WITHOUT_PRIVATE_TMP) is None
    assert unitcheck.exec_problem("/bin/sh", SHIPPED) is None  # a binary: no interpreter to check


def test_a_symlink_into_a_hidden_path_is_refused(tmp_path):
    # /usr/local/bin/gpuwatch -> /home/.../gpuwatch: the literal path looks fine, its target is hidden
    target = script(tmp_path / "home/someone/gpuwatch")
    link = tmp_path / "usr/local/bin/gpuwatch"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    unit = WITHOUT_PRIVATE_TMP + f"\n[Service]\nInaccessiblePaths={tmp_path / 'home'}\n"
    problem = unitcheck.exec_problem(str(link), unit)
    assert problem is not None and "symlink" in problem and str(target) in problem


def test_a_script_whose_interpreter_is_hidden_or_missing_is_refused(tmp_path):
    # a venv under /opt made from a Python that lives in /root (pyenv): the script is visible, its python is not
    hidden_python = script(tmp_path / "root/.pyenv/bin/python3")
    venv_python = tmp_path / "opt/gpuwatch/bin/python3"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(hidden_python)
    entry = script(tmp_path / "opt/gpuwatch/bin/gpuwatch", interpreter=str(venv_python))
    unit = WITHOUT_PRIVATE_TMP + f"\n[Service]\nInaccessiblePaths={tmp_path / 'root'}\n"
    problem = unitcheck.exec_problem(str(entry), unit)
    assert problem is not None and f"the interpreter {venv_python}" in problem and str(hidden_python) in problem
    orphan = script(tmp_path / "opt/other/gpuwatch", interpreter=str(tmp_path / "gone/python3"))
    assert "interpreter" in unitcheck.exec_problem(str(orphan), WITHOUT_PRIVATE_TMP)


def test_force_path_writes_the_unit_anyway(tmp_path):
    root = tmp_path / "root"
    result = gpuwatch(
        "install-service", "--root", str(root), "--bin", "/home/someone/.venv/bin/gpuwatch", "--force-path"
    )
    assert result.returncode == 0, result.stderr
    unit = (root / "etc/systemd/system/gpuwatch.service").read_text()
    assert "ExecStart=/home/someone/.venv/bin/gpuwatch serve" in unit
