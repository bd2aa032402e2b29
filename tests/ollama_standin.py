"""A local stand-in for Ollama that speaks its documented HTTP API, for the proxy's tests and benchmark.

What it follows (docs.ollama.com/api: generate, chat, ps, streaming, errors): ``POST /api/generate``
and ``POST /api/chat`` stream NDJSON (``application/x-ndjson``, chunked) by default, one object per
line with ``"done": false``, then a final object with ``"done": true``, ``done_reason`` and the
statistics (``total_duration``, ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``,
``eval_count``, ``eval_duration``, in that order after ``context`` for generate); with
``"stream": false`` one JSON object (``application/json``). An error before the answer starts is a
status code with ``{"error": "..."}``; an error mid-stream is an ``{"error": "..."}`` line, after which
the stream ends. ``GET /api/ps`` lists the loaded models. Tokens are words here: the prompt's word
count is ``prompt_eval_count``, and ``options.num_predict`` (default 8) words are generated.

Knobs for hostile cases: ``fail_after`` (an error line after that many chunks), ``chunk_delay_s``,
``context_tokens`` (a long ``context`` array, for huge final lines), ``refuse`` (a status code for
every generate/chat). ``cancelled`` counts answers whose client went away mid-stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODELS = [
    {
        "name": "gemma3:4b",
        "model": "gemma3:4b",
        "size": 6591830464,
        "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
        "details": {"parent_model": "", "format": "gguf", "family": "gemma3", "families": ["gemma3"],
                    "parameter_size": "4.3B", "quantization_level": "Q4_K_M"},
        "expires_at": "2026-12-01T18:00:00.000000000Z",
        "size_vram": 5333539264,
        "context_length": 4096,
    }
]  # fmt: skip


class StandIn:
    """Ollama's API on a free loopback port; its settings may be changed between requests."""

    def __init__(self) -> None:
        self.fail_after: int | None = None
        self.chunk_delay_s = 0.0
        self.context_tokens = 3
        self.refuse: int | None = None
        self.models: list[dict[str, Any]] = list(MODELS)
        self.cancelled = 0
        self.answers: list[bytes] = []  # every answer body as sent (de-chunked)
        self.send_times: list[list[float]] = []  # perf_counter() at each chunk's write, per streamed answer
        self.raw_sent: list[bytearray] = []  # every byte written, per connection
        self.raw_received: list[bytearray] = []  # every byte read, per connection
        self.lock = threading.Lock()
        standin = self

        class Handler(_Handler):
            owner = standin

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def ollama_standin() -> Iterator[StandIn]:
    standin = StandIn()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


class _Recording:
    """A file of the connection that keeps a copy of every byte read or written."""

    def __init__(self, file: Any, copy: bytearray) -> None:
        self._file, self._copy = file, copy

    def write(self, data: bytes) -> int:
        self._copy += data
        return int(self._file.write(data))

    def readline(self, limit: int = -1) -> bytes:
        line = bytes(self._file.readline(limit))
        self._copy += line
        return line

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._file.read(size))
        self._copy += data
        return data

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return bool(self._file.closed)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        sent, received = bytearray(), bytearray()
        with self.owner.lock:
            self.owner.raw_sent.append(sent)
            self.owner.raw_received.append(received)
        self.wfile = _Recording(self.wfile, sent)  # type: ignore[assignment]
        self.rfile = _Recording(self.rfile, received)  # type: ignore[assignment]

    def do_GET(self) -> None:
        if self.path == "/api/ps":
            self._json(200, {"models": self.owner.models})
        elif self.path == "/api/version":
            self._json(200, {"version": "0.13.0"})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path not in ("/api/generate", "/api/chat"):
            self._json(404, {"error": "not found"})
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self._json(400, {"error": "invalid JSON"})
            return
        if self.owner.refuse is not None:
            self._json(self.owner.refuse, {"error": f"model '{request.get('model')}' not found"})
            return
        chat = self.path == "/api/chat"
        text = (
            " ".join(m.get("content", "") for m in request.get("messages", [])) if chat else request.get("prompt", "")
        )
        prompt_tokens = len(text.split())
        predict = int((request.get("options") or {}).get("num_predict", 8))
        words = [f" w{i}" for i in range(predict)]
        final = self._final(request, chat, prompt_tokens, predict, "".join(words))
        if request.get("stream", True) is False:
            self._json(200, final)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent: list[float] = []
        body = b""
        try:
            for i, word in enumerate(words):
                if self.owner.fail_after is not None and i == self.owner.fail_after:
                    line = self._line({"error": "an error was encountered while running the model: out of memory"})
                    body += line
                    self._chunk(line)
                    break
                piece = {"model": request.get("model"), "created_at": "2026-12-01T17:00:00Z"}
                piece.update({"message": {"role": "assistant", "content": word}} if chat else {"response": word})
                piece["done"] = False
                line = self._line(piece)
                body += line
                sent.append(time.perf_counter())
                self._chunk(line)
                if self.owner.chunk_delay_s:
                    time.sleep(self.owner.chunk_delay_s)
            else:
                line = self._line(final)
                body += line
                sent.append(time.perf_counter())
                self._chunk(line)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with self.owner.lock:
                self.owner.cancelled += 1
            self.close_connection = True
            return
        with self.owner.lock:
            self.owner.answers.append(body)
            self.owner.send_times.append(sent)

    def _final(self, request: dict[str, Any], chat: bool, prompt: int, predict: int, text: str) -> dict[str, Any]:
        final: dict[str, Any] = {"model": request.get("model"), "created_at": "2026-12-01T17:00:01Z"}
        if chat:
            final["message"] = {"role": "assistant", "content": "" if request.get("stream", True) else text}
        else:
            final["response"] = "" if request.get("stream", True) else text
        final.update({"done": True, "done_reason": "length"})
        if not chat:
            final["context"] = list(range(self.owner.context_tokens))
        final.update(
            {
                "total_duration": 1_000_000,
                "load_duration": 10_000,
                "prompt_eval_count": prompt,
                "prompt_eval_duration": 100_000,
                "eval_count": predict,
                "eval_duration": 800_000,
            }
        )
        return final

    def _line(self, obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.owner.lock:
            self.owner.answers.append(body)
