"""``python -m benchmarks.proxy [--quick] [--chunks N] [--streams N]``: the latency the Ollama proxy adds per chunk.

An upstream in this process streams NDJSON the way Ollama does (chunked, one object per chunk, a
final ``"done": true`` object with the counts), writing each chunk's ``perf_counter()`` into it; a
client in this process reads the stream and notes when each line arrives. The same streams are read
once directly and once through :class:`~gpuwatch.tokens.proxy.OllamaProxy` running in a process of
its own (as in ``gpuwatch serve``), all on loopback. A chunk's delay is its arrival time minus its
write time; the table gives p50, p99 and max of each path and the difference of the p99s, which is
what the proxy adds. Chunks are written ``GAP_S`` apart, as decode steps are, so that they are
relayed one by one rather than coalesced.

The delays include the Python client's and upstream's own scheduling; on a loaded machine (CI, a
shared host) both paths suffer, and the proxied one has two more thread wake-ups per chunk.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GAP_S = 0.002  # between two chunks of one stream: 500 tokens/s, a fast decode
TARGET_P99_S = 0.001

_PROXY = """
import signal, sys, threading
from gpuwatch.tokens.proxy import OllamaProxy, Tally
proxy = OllamaProxy("127.0.0.1:0", sys.argv[1], Tally())
proxy.start()
print(proxy.port, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
proxy.stop()
prompt, generation, answers = proxy.tally.read()
print(prompt, generation, answers, flush=True)
"""


class Upstream:
    """Streams ``chunks`` NDJSON objects per request on a loopback port, one thread per connection."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(self.chunks):
                done = i == self.chunks - 1
                piece: dict[str, Any] = {"model": "bench", "response": " w", "done": done, "i": i}
                if done:
                    piece.update({"prompt_eval_count": 3, "eval_count": self.chunks})
                piece["t"] = time.perf_counter()
                line = json.dumps(piece).encode() + b"\n"
                conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
                time.sleep(GAP_S)
            conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self._listener.close()


def stream_delays(port: int) -> list[float]:
    """One streamed answer read on ``port``: each line's arrival minus its write time, in seconds."""
    body = json.dumps({"model": "bench", "prompt": "a b c"}).encode()
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    delays = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        pending = b""
        while data := sock.recv(65536):
            now = time.perf_counter()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                start = line.find(b"{")
                if start != -1 and line.rstrip(b"\r").endswith(b"}"):
                    delays.append(now - json.loads(line[start:])["t"])
    return delays


def measure(streams: int, chunks: int, concurrent: int) -> dict[str, Any]:
    upstream = Upstream(chunks)
    proxy = subprocess.Popen(
        [sys.executable, "-c", _PROXY, f"http://127.0.0.1:{upstream.port}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proxy.stdout is not None
        proxy_port = int(proxy.stdout.readline())
        results: dict[str, Any] = {"streams": streams, "chunks_per_stream": chunks, "concurrent": concurrent}
        for path, port in (("direct", upstream.port), ("proxied", proxy_port)):
            delays: list[float] = []
            lock = threading.Lock()

            def reader(count: int, port: int = port, delays: list[float] = delays, lock: threading.Lock = lock) -> None:
                for _ in range(count):
                    got = stream_delays(port)
                    with lock:
                        delays.extend(got)

            threads = [threading.Thread(target=reader, args=(streams // concurrent,)) for _ in range(concurrent)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            results[path] = summary(delays)
        proxy.terminate()
        counted = proxy.communicate(timeout=10)[0].split()
        results["proxy_counted"] = {
            "prompt": int(counted[0]),
            "generation": int(counted[1]),
            "answers": int(counted[2]),
        }
        results["added_p50_seconds"] = results["proxied"]["p50"] - results["direct"]["p50"]
        results["added_p99_seconds"] = results["proxied"]["p99"] - results["direct"]["p99"]
        return results
    finally:
        if proxy.poll() is None:
            proxy.kill()
        upstream.close()


def summary(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "chunks": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def render(results: dict[str, Any]) -> str:
    ms = 1000.0
    rows = [
        f"Ollama proxy, per chunk on loopback ({results['streams']} streams of {results['chunks_per_stream']} "
        f"chunks, {results['concurrent']} at once, {GAP_S * ms:g} ms apart)",
        f"{'path':<9} {'chunks':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for path in ("direct", "proxied"):
        s = results[path]
        rows.append(f"{path:<9} {s['chunks']:>7} {s['p50'] * ms:>8.3f} {s['p99'] * ms:>8.3f} {s['max'] * ms:>8.3f}")
    added = results["added_p99_seconds"]
    verdict = "under" if added < TARGET_P99_S else "OVER"
    rows.append(f"added by the proxy at p50: {results['added_p50_seconds'] * ms:.3f} ms")
    rows.append(f"added by the proxy at p99: {added * ms:.3f} ms ({verdict} the {TARGET_P99_S * ms:g} ms target)")
    counted = results["proxy_counted"]
    rows.append(f"the proxy counted {counted['generation']} generated tokens in {counted['answers']} answers")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that checks the benchmark works")
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=250)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    streams, chunks, concurrent = (4, 20, 2) if args.quick else (args.streams, args.chunks, args.concurrent)
    results = measure(streams, chunks, concurrent)
    results["command"] = " ".join(["python -m benchmarks.proxy", *(argv if argv is not None else sys.argv[1:])])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
