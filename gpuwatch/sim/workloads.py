"""Real processes behind the simulated GPUs' workloads.

A real driver lists live processes: their pids have names, users, parents and start times that
psutil (gpuwatch, gpustat, nvitop) reads from ``/proc``. So the simulator starts one small, idle
child process for each workload it lists, named as the workload (``vllm``, ``python3``,
``llama-server``): a Python interpreter started under a link of that name, so the kernel's
``comm`` and psutil's ``name()`` say so, that does nothing but wait for its parent to hang up.

* A simulated inference server's process is a child of this process, where the server's HTTP
  endpoint listens, so the server's process tree holds its GPU process, as with a real server
  and its workers (token attribution reads that tree).
* Any other workload's process is detached (double fork, reparented to init): it belongs to no
  server's tree, as a stranger's job on the same host would not.

Every such process blocks reading a pipe whose only writer is this process. Closing the pipe
(:meth:`WorkloadProcesses.close`, at interpreter exit at the latest) ends it; so does this
process dying in any way, SIGKILL included, since the kernel closes the pipe then. None outlives
the simulation.

A scenario's pid that names a process already running is listed as it is. A busy GPU that the
scenario gives no process gets one (``python3``, holding most of the card's memory), as every GPU
under load on a real host runs someone's program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import replace

import psutil

from gpuwatch.sim.physics import SimGpu
from gpuwatch.sim.profiles import MIB
from gpuwatch.sim.scenario import SimProcess

DEFAULT_NAME = "python3"
DEFAULT_MEMORY_SHARE = 0.8  # of the memory a busy GPU without a scenario process has in use
_BUSY_LOAD = 0.02
_PLACEHOLDER_PID_BASE = 4194304  # 2^22, above any Linux pid: listed only until the real ones start

# The child: ignore the terminal's Ctrl-C (its parent handles that), optionally detach, say its
# pid, then wait for EOF on stdin. Run with -I -S, so it starts in about 10 ms and imports nothing.
# One line, as it shows in ps and nvitop's COMMAND column after the workload's name.
_CHILD = (
    "import os,signal;signal.signal(signal.SIGINT,signal.SIG_IGN);"
    "{detach}os.write(1,b'%d\\n'%os.getpid());os.close(1);[0 for _ in iter(lambda:os.read(0,4096),b'')]"
)
_DETACH = "os.fork() and os._exit(0);"


class WorkloadProcesses:
    """The live processes behind every GPU's listed workloads, started on first use."""

    def __init__(self, gpus: list[SimGpu], server_pids: frozenset[int] = frozenset()) -> None:
        """``server_pids``: the placeholder pids of simulated servers' processes (our children)."""
        self._gpus = gpus
        self._server_pids = server_pids
        self._lock = threading.Lock()
        self._started = False
        self.real_pids: dict[int, int] = {}  # placeholder (scenario) pid -> live pid
        self._pipes: list[subprocess.Popen[bytes]] = []
        for gpu in gpus:
            if not gpu.processes and max(level for _, level in gpu.spec.load_steps) > _BUSY_LOAD:
                usable = gpu.profile.memory_total_mib - gpu.profile.memory_reserved_mib
                gpu.processes.append(
                    SimProcess(
                        pid=_PLACEHOLDER_PID_BASE + gpu.index,
                        name=DEFAULT_NAME,
                        used_memory_bytes=int(usable * DEFAULT_MEMORY_SHARE) * MIB,
                    )
                )
        self._finalizer = weakref.finalize(self, _hang_up, self._pipes)

    def ensure_started(self) -> None:
        """Start the processes (once) and list their live pids in place of the scenario's."""
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            wanted: dict[int, str] = {}
            for gpu in self._gpus:
                for proc in gpu.processes:
                    # A scenario may name a process that runs already (a test's own worker): keep it.
                    if proc.pid in self._server_pids or not psutil.pid_exists(proc.pid):
                        wanted.setdefault(proc.pid, proc.name)
            self.real_pids = self._spawn(wanted)
            for gpu in self._gpus:
                gpu.processes[:] = [replace(p, pid=self.real_pids.get(p.pid, p.pid)) for p in gpu.processes]
            self._started = True

    def close(self) -> None:
        """End every process (idempotent)."""
        self._finalizer()

    def _spawn(self, wanted: dict[int, str]) -> dict[int, int]:
        if not wanted:
            return {}
        python = os.path.realpath(sys.executable)
        links = tempfile.mkdtemp(prefix="gpuwatch-sim-")
        started: list[tuple[int, subprocess.Popen[bytes]]] = []
        try:
            for placeholder, name in wanted.items():
                link = os.path.join(links, f"{placeholder}", _comm(name))
                os.makedirs(os.path.dirname(link))
                os.symlink(python, link)
                detach = placeholder not in self._server_pids
                child = subprocess.Popen(
                    [name, "-IS", "-c", _CHILD.format(detach=_DETACH if detach else "")],
                    executable=link,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # out of the terminal's process group: Ctrl-C is ours
                )
                self._pipes.append(child)
                started.append((placeholder, child))
            pids = {}
            for placeholder, child in started:
                assert child.stdout is not None
                line = child.stdout.readline()
                child.stdout.close()
                pids[placeholder] = int(line)
                if placeholder not in self._server_pids:
                    child.wait()  # the intermediate of the double fork exits at once
            return pids
        except BaseException:
            _hang_up(self._pipes)
            raise
        finally:
            shutil.rmtree(links, ignore_errors=True)  # the processes keep their names without the links


def _comm(name: str) -> str:
    """A file name the kernel keeps as the process's ``comm`` (15 bytes, no slash)."""
    return (name.replace("/", "_") or DEFAULT_NAME)[:15]


def _hang_up(children: list[subprocess.Popen[bytes]]) -> None:
    """Close every process's pipe, so each reads EOF and exits; reap our own children."""
    for child in children:
        if child.stdin is not None and not child.stdin.closed:
            child.stdin.close()
    for child in children:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    children.clear()
