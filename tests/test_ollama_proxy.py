"""The Ollama proxy against a stand-in that speaks Ollama's documented API (tests/ollama_standin.py).

Every answer must reach the client byte for byte as the stand-in wrote it, and every request reach the
stand-in as the client wrote it; only the final objects' counts are taken, and hostile cases stay bounded.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ollama_standin import StandIn, ollama_standin
from prometheus_client import generate_latest
from serving import free_port, get_from, serve
from waiting import wait_until

from gpuwatch.exporter.registry import build_registry
from gpuwatch.model import LoadedModel, Snapshot, SourceStatus
from gpuwatch.status import render_table, to_document
from gpuwatch.tokens import ollama
from gpuwatch.tokens.proxy import (
    MAX_PARSED_LINE_BYTES,
    LineCounter,
    OllamaProxy,
    Tally,
    _body_framing,
    _Broken,
    _Dechunker,
    _parse_head,
    parse_listen,
)
from gpuwatch.tokens.source import from_table
from gpuwatch.tokens.tracker import TokenTracker


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with ollama_standin() as server:
        yield server


@pytest.fixture
def proxy(standin: StandIn) -> Iterator[OllamaProxy]:
    relay = OllamaProxy("127.0.0.1:0", standin.url, Tally())
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def raw_exchange(port: int, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send ``request`` as is and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def post(path: str, body: dict, close: bool = True) -> bytes:  # type: ignore[type-arg]
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nUser-Agent: ollama-python/0.6\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + payload


def last_connection(standin: StandIn) -> tuple[bytes, bytes]:
    assert wait_until(lambda: standin.raw_sent and standin.raw_sent[-1].endswith((b"0\r\n\r\n", b"}")))
    return bytes(standin.raw_received[-1]), bytes(standin.raw_sent[-1])


GENERATE = {"model": "gemma3:4b", "prompt": "why is the sky blue", "options": {"num_predict": 12}}
CHAT = {
    "model": "gemma3:4b",
    "messages": [{"role": "user", "content": "hello there gpu"}],
    "options": {"num_predict": 5},
}


@pytest.mark.parametrize(
    ("path", "body", "tokens"),
    [
        ("/api/generate", GENERATE, (5, 12)),
        ("/api/generate", {**GENERATE, "stream": False}, (5, 12)),
        ("/api/chat", CHAT, (3, 5)),
        ("/api/chat", {**CHAT, "stream": False}, (3, 5)),
    ],
)
def test_answers_pass_byte_for_byte_and_the_final_counts_are_taken(standin, proxy, path, body, tokens):
    request = post(path, body)
    received = raw_exchange(proxy.port, request)
    upstream_got, upstream_sent = last_connection(standin)
    assert upstream_got == request
    assert received == upstream_sent
    assert b"Transfer-Encoding: chunked" in received or b"Content-Length" in received
    assert proxy.tally.read() == (*tokens, 1)


def test_streamed_chunks_arrive_as_written_not_gathered(standin, proxy):
    standin.chunk_delay_s = 0.2  # the final object comes at least 3.8 s after the first word
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(post("/api/generate", {**GENERATE, "options": {"num_predict": 20}}))
        data = b""
        while b'"response":" w1"' not in data:
            data += sock.recv(65536)
        assert b'"done":true' not in data
    assert wait_until(lambda: standin.cancelled == 1, timeout_s=10)


def test_keep_alive_carries_several_requests_on_one_client_connection(standin, proxy):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    for _ in range(3):
        connection.request("POST", "/api/generate", json.dumps(GENERATE), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        lines = answer.read().splitlines()
        assert json.loads(lines[-1])["done"] is True
    connection.request("GET", "/api/ps")
    assert json.loads(connection.getresponse().read())["models"][0]["name"] == "gemma3:4b"
    connection.close()
    assert proxy.tally.read() == (15, 36, 3)


def test_an_error_mid_stream_passes_through_and_counts_nothing(standin, proxy):
    standin.fail_after = 3
    received = raw_exchange(proxy.port, post("/api/generate", GENERATE))
    _, upstream_sent = last_connection(standin)
    assert received == upstream_sent
    assert b'{"error":"an error was encountered' in received
    assert proxy.tally.read() == (0, 0, 0)


def test_an_error_status_passes_through_and_counts_nothing(standin, proxy):
    standin.refuse = 404
    received = raw_exchange(proxy.port, post("/api/chat", CHAT))
    assert received.startswith(b"HTTP/1.0 404") or received.startswith(b"HTTP/1.1 404")
    assert b"model 'gemma3:4b' not found" in received
    assert proxy.tally.read() == (0, 0, 0)


def test_a_client_that_goes_away_cancels_the_answer_upstream_and_frees_its_slot(standin):
    standin.chunk_delay_s = 0.05
    relay = OllamaProxy("127.0.0.1:0", standin.url, Tally(), max_connections=1)
    relay.start()
    try:
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        sock.sendall(post("/api/generate", {**GENERATE, "options": {"num_predict": 400}}))
        assert sock.recv(65536)
        sock.close()
        assert wait_until(lambda: standin.cancelled == 1, timeout_s=10)
        standin.chunk_delay_s = 0.0
        # the one slot is free again: the next client is served, not turned away
        assert wait_until(lambda: b"200 OK" in raw_exchange(relay.port, post("/api/chat", CHAT)), timeout_s=10)
        assert relay.tally.read() == (3, 5, 1)
    finally:
        relay.stop()


def test_ollama_down_is_a_502_that_says_so():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    relay = OllamaProxy("127.0.0.1:0", f"http://127.0.0.1:{closed_port}", Tally())
    relay.start()
    try:
        received = raw_exchange(relay.port, post("/api/generate", GENERATE))
    finally:
        relay.stop()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert body == f"gpuwatch proxy: cannot reach Ollama at http://127.0.0.1:{closed_port}: ".encode() + (
        b"connection refused (is Ollama running?)\n"
    )


def test_a_huge_final_line_is_relayed_whole_and_counted_from_its_tail(standin, proxy):
    standin.context_tokens = 400_000  # a non-streaming answer of about 3 MB on one line
    request = post("/api/generate", {**GENERATE, "stream": False})
    received = raw_exchange(proxy.port, request)
    _, upstream_sent = last_connection(standin)
    assert len(received) > 2 * MAX_PARSED_LINE_BYTES
    assert received == upstream_sent
    assert proxy.tally.read() == (5, 12, 1)


def test_the_line_counter_keeps_only_a_bounded_tail_of_a_long_line():
    tally = Tally()
    counter = LineCounter(tally)
    counter.feed(b'{"response":"' + b"x" * (4 * MAX_PARSED_LINE_BYTES))
    assert len(counter._line) <= MAX_PARSED_LINE_BYTES + 1
    counter.feed(b'","done":true,"prompt_eval_count":7,"eval_count":9}\n')
    counter.feed(b'{"done":false,"response":"a"}\n{"done":true,"eval_count":2}')
    counter.finish()
    assert tally.read() == (7, 11, 2)


@pytest.mark.parametrize(
    "line",
    [
        b'{"done":true,"eval_count":-1,"prompt_eval_count":1}',
        b'{"done":true,"eval_count":true}',
        b'{"done":"yes","eval_count":3}',
        b'{"error":"boom","done":true,"eval_count":3}',
        b"not json at all",
        b"[1,2,3]",
    ],
)
def test_lines_that_are_not_a_final_answer_count_nothing(line: bytes):
    tally = Tally()
    counter = LineCounter(tally)
    counter.feed(line + b"\n")
    counter.finish()
    assert tally.read() == (0, 0, 0)


def test_connections_are_bounded_and_the_one_over_is_told_why(standin):
    relay = OllamaProxy("127.0.0.1:0", standin.url, Tally(), max_connections=2)
    relay.start()
    idle = [socket.create_connection(("127.0.0.1", relay.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.05)  # both accepted; the proxy holds their slots while they say nothing
        turned_away = raw_exchange(relay.port, post("/api/chat", CHAT))
        assert turned_away.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert b"too many connections (at most 2 at once)" in turned_away
        idle.pop().close()
        assert wait_until(lambda: b"200 OK" in raw_exchange(relay.port, post("/api/chat", CHAT)), timeout_s=10)
    finally:
        for sock in idle:
            sock.close()
        relay.stop()


def test_a_request_head_over_the_limit_is_refused():
    relay = OllamaProxy("127.0.0.1:0", "http://127.0.0.1:9", Tally())
    relay.start()
    try:
        received = raw_exchange(relay.port, b"GET /api/ps HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n")
    finally:
        relay.stop()
    assert received.startswith(b"HTTP/1.1 431")


def test_expect_100_continue_waits_for_ollamas_word(standin, proxy):
    payload = json.dumps(CHAT).encode()
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(payload)
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(payload)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert b'"done":true' in rest
    assert proxy.tally.read() == (3, 5, 1)


def test_stop_ends_answers_in_flight_and_the_listener(standin):
    standin.chunk_delay_s = 0.05
    relay = OllamaProxy("127.0.0.1:0", standin.url, Tally())
    relay.start()
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    sock.sendall(post("/api/generate", {**GENERATE, "options": {"num_predict": 400}}))
    assert sock.recv(65536)
    relay.stop()
    sock.settimeout(5)
    while sock.recv(65536):
        pass  # ends well before the 20 s the answer would take
    sock.close()
    assert not relay._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=1).close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:11435", ("127.0.0.1", 11435)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:1", ("0.0.0.0", 1))],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["11435", ":11435", "host:", "host:70000", "host:port"])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(text)


def test_config_listen_is_for_ollama_only_and_checked():
    table = {"url": "http://127.0.0.1:11434", "preset": "ollama", "listen": "127.0.0.1:11435"}
    config = from_table(table, float)
    assert (config.preset, config.listen, config.name, config.metrics) == (
        "ollama",
        "127.0.0.1:11435",
        "ollama",
        ollama.METRICS,
    )
    with pytest.raises(KeyError, match="listen"):
        from_table({"url": "http://127.0.0.1:8000/metrics", "preset": "vllm", "listen": "127.0.0.1:1"}, float)
    with pytest.raises(KeyError, match="listen"):
        from_table({**table, "listen": "11435"}, float)
    with pytest.raises(KeyError, match="port 0"):
        from_table({**table, "listen": "127.0.0.1:0"}, float)


# -- Ollama as a token source -------------------------------------------------------------------------


def test_an_ollama_source_shows_its_models_and_the_proxys_counts(standin, proxy):
    config = from_table({"url": standin.url, "preset": "ollama", "gpus": [0]}, float)
    tracker = TokenTracker([config], clock=time.monotonic, tallies={"ollama": proxy.tally})
    raw_exchange(proxy.port, post("/api/generate", GENERATE))
    tracker.scrape_all()
    (source,) = tracker.observe(Snapshot(timestamp=1.0, nvml_up=True)).sources
    assert source.up, source.error
    assert source.preset == "ollama"
    assert source.tokens_total == {"generation": 12.0, "prompt": 5.0}
    assert [(m.name, m.size_bytes, m.vram_bytes, m.context_length) for m in source.models] == [
        ("gemma3:4b", 6591830464, 5333539264, 4096)
    ]


def test_an_ollama_source_without_a_proxy_has_models_and_no_token_counts(standin):
    config = from_table({"url": standin.url, "preset": "ollama", "gpus": [0]}, float)
    tracker = TokenTracker([config], clock=time.monotonic)
    tracker.scrape_all()
    tracker.scrape_all()
    (source,) = tracker.observe(Snapshot(timestamp=1.0, nvml_up=True)).sources
    assert source.up and source.tokens_total == {} and len(source.models) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>", "did not answer JSON"),
        (b'{"model":"x"}', 'without a "models" list'),
        (b'{"models":[{"name":"a","size":1}]}', "without a name, size and size_vram"),
        (b'{"models":[{"name":"a","size":-1,"size_vram":0}]}', "size out of range"),
    ],
)
def test_an_api_ps_answer_that_is_not_ollamas_is_refused(body: bytes, message: str):
    with pytest.raises(ValueError, match=message):
        ollama.parse_ps(body)


def test_api_ps_under_a_base_path():
    assert ollama.ps_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434/api/ps"
    assert ollama.ps_url("http://gw/ollama/") == "http://gw/ollama/api/ps"


def ollama_snapshot(models: tuple[LoadedModel, ...], tokens: dict[str, float]) -> Snapshot:
    source = SourceStatus(
        name="ollama",
        url="http://127.0.0.1:11434",
        up=True,
        preset="ollama",
        gpus=(0,),
        tokens_total=tokens,
        models=models,
    )
    return Snapshot(timestamp=1.0, nvml_up=True, sources=(source,))


GEMMA = LoadedModel("gemma3:4b", 6591830464, 5333539264, 4096)


def test_loaded_models_are_series_and_promtool_clean(promtool):
    text = generate_latest(build_registry(lambda: ollama_snapshot((GEMMA,), {}), include_process=False)).decode()
    assert 'gpuwatch_source_model_vram_bytes{model="gemma3:4b",source="ollama"} 5.333539264e+09' in text
    assert 'gpuwatch_source_model_memory_bytes{model="gemma3:4b",source="ollama"} 6.591830464e+09' in text
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    empty = generate_latest(build_registry(lambda: ollama_snapshot((), {}), include_process=False)).decode()
    assert "gpuwatch_source_model_" not in empty  # no models listed: no series, never zeros


def test_status_shows_the_models_and_what_to_set_for_tokens():
    document = to_document(ollama_snapshot((GEMMA,), {}), 0.5, 1.0, 10.0)
    (source,) = document["sources"]
    assert source["models"] == [
        {"name": "gemma3:4b", "size_bytes": 6591830464, "vram_bytes": 5333539264, "context_length": 4096}
    ]
    table = render_table(document)
    assert "gemma3:4b (5.0 of 6.1 GiB in VRAM)" in table
    assert "set listen in its [[tokens]] table" in table
    counted = render_table(to_document(ollama_snapshot((GEMMA,), {"generation": 3.0}), 0.5, 1.0, 10.0))
    assert "set listen" not in counted


# -- in the daemon ----------------------------------------------------------------------------------------


def ollama_config(tmp_path, standin: StandIn, listen_port: int):  # type: ignore[no-untyped-def]
    path = tmp_path / "gpuwatch.toml"
    path.write_text(
        f'[[tokens]]\nurl = "{standin.url}"\npreset = "ollama"\nlisten = "127.0.0.1:{listen_port}"\ngpus = [0]\n'
    )
    return path


def test_the_daemon_runs_the_proxy_exports_its_counts_and_stops_it_on_sigterm(tmp_path, standin):
    listen_port = free_port()
    config = ollama_config(tmp_path, standin, listen_port)
    with serve(tmp_path, "--simulate", "inference-host", "--config", str(config)) as daemon:
        daemon.wait_for_log(f"Ollama proxy on 127.0.0.1:{listen_port}", timeout_s=30)
        assert b'"done":true' in raw_exchange(listen_port, post("/api/chat", CHAT))

        def exported() -> bool:
            text = get_from("127.0.0.1", daemon.port)[1]
            return (
                b'gpuwatch_tokens_total{kind="generation",source="ollama"} 5.0' in text
                and b'gpuwatch_source_model_vram_bytes{model="gemma3:4b",source="ollama"}' in text
            )

        assert wait_until(exported, timeout_s=20)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
    # the proxy's port is free once the daemon is gone: a restarted daemon listens there again
    socket.create_server(("127.0.0.1", listen_port)).close()


def test_the_daemon_refuses_to_start_when_the_proxy_cannot_listen(tmp_path, standin):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ollama_config(tmp_path, standin, taken.getsockname()[1])
        with serve(tmp_path, "--simulate", "inference-host", "--config", str(config), wait_ready=False) as daemon:
            assert daemon.proc.wait(20) == 1
            assert f"token source ollama: cannot listen on 127.0.0.1:{taken.getsockname()[1]}" in daemon.stderr


# -- framing -----------------------------------------------------------------------------------------------


def chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    body = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(p), p) if i % 2 else b"%X\r\n%s\r\n" % (len(p), p) for i, p in enumerate(pieces)
    )
    return body + b"0\r\n" + trailers + b"\r\n"


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    trailers=st.sampled_from([b"", b"X-Checksum: 1\r\n", b"A: 1\r\nB: 2\r\n"]),
    after=st.binary(max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_a_chunked_body_fed_in_any_pieces_gives_its_payload_and_its_end(pieces, trailers, after, cuts):
    body = chunked(pieces, trailers)
    stream = body + after
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    dechunker, payload, end = _Dechunker(), bytearray(), None
    for start, stop in itertools.pairwise(bounds):
        found = dechunker.feed(stream[start:stop], payload.extend)
        if found is not None:
            end = start + found
            break
    assert bytes(payload) == b"".join(pieces)
    assert end == len(body)


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\nabc\r\n", b"3\r\nabcdef\r\n", b"1" * 5000 + b"\r\n", b"-1\r\n"],
)
def test_a_malformed_chunked_body_is_refused(bad: bytes):
    with pytest.raises(_Broken):
        _Dechunker().feed(bad, lambda _: None)


@pytest.mark.parametrize(
    ("head", "answering", "framing"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", None, ("length", 12)),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None, ("chunked", 0)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, ("none", 0)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "POST", ("length", 5)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", ("none", 0)),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", ("none", 0)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "GET", ("chunked", 0)),
        (b"HTTP/1.1 200 OK\r\n\r\n", "GET", ("close", 0)),
    ],
)
def test_message_framing(head: bytes, answering: str | None, framing: tuple[str, int]):
    assert _body_framing(_parse_head(head), answering) == framing


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_a_request_whose_body_cannot_be_delimited_is_refused(head: bytes):
    with pytest.raises(_Broken):
        _body_framing(_parse_head(head), None)


def test_listening_beyond_loopback_is_warned_about(standin, caplog):
    relay = OllamaProxy("0.0.0.0:0", standin.url, Tally())
    with caplog.at_level(logging.WARNING, logger="gpuwatch.tokens.proxy"):
        relay.start()
    relay.stop()
    assert any("no authentication" in r.getMessage() for r in caplog.records)
