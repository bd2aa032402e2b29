"""Finding a token source's GPUs from the real process table (psutil), with a real listening child."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from serving import free_port

from gpuwatch.tokens.attribution import AttributionError, attribute, gpus_running

# A parent that starts a child holding "the GPU", then listens: like an API server and its worker.
SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.BaseHTTPRequestHandler).serve_forever()
"""


@pytest.fixture
def listening_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 10
    while True:
        try:
            attribute(f"http://127.0.0.1:{port}/metrics", {})
            break
        except AttributionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield port, proc.pid, child
    proc.kill()
    proc.wait()
    subprocess.run(["kill", str(child)], check=False)


def test_the_gpus_of_a_server_come_from_its_process_tree(listening_server):
    port, parent, child = listening_server
    found = attribute(f"http://localhost:{port}/metrics", {0: (4194001,), 1: (child,), 2: (parent, 7), 3: ()})
    assert found.pid == parent
    assert found.gpus == (1, 2)


def test_nobody_listening_is_an_error_that_says_so():
    port = free_port()
    with pytest.raises(AttributionError, match=f"no process listens on port {port}"):
        attribute(f"http://127.0.0.1:{port}/metrics", {0: (1,)})


def test_a_remote_server_needs_its_gpus_configured():
    with pytest.raises(AttributionError, match=r"192.0.2.7 is not this host; set gpus = \[...\]"):
        attribute("http://192.0.2.7:8000/metrics", {0: (1,)})


def test_gpus_running():
    assert gpus_running({5, 6}, {0: (1, 5), 1: (2,), 2: (6,)}) == (0, 2)
