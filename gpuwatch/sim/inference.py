"""A simulated inference server: token counters that follow the simulated GPUs, served as vLLM does.

The token side (:class:`SimInferenceServer`) steps with the simulated driver, so tokens and energy
come from the same simulated instants. It keeps the true totals, for tests to compare against.

Roofline: a decode step over a batch of ``B`` sequences takes ``max(compute, memory)``: compute
time grows with ``B`` (2 FLOP per parameter per token) and scales with 1/SM clock; memory time is
the weights plus ``B`` sequences' KV cache read once, and scales with 1/memory clock. For an 8B
BF16 model (16 GB of weights, 128 KiB of KV cache per token at ~1000 tokens of context) on RTX
A6000-class GPUs (768 GB/s, ~80 % of it reached; ~32 TFLOPS reached by decode's thin GEMMs, about a
fifth of the 155 TFLOPS dense BF16 peak [est]) that gives, at the full batch of 64 sequences,
compute time = ``DECODE_COMPUTE_RATIO`` (0.8) x memory time: memory-bound at full clocks, so a
15-20 % power cut costs almost nothing (sweeps cited in :mod:`gpuwatch.sim.physics`), and
compute-bound once the SM clock falls below 80 % or the batch grows past ~90 sequences. Small
batches stay memory-bound (the weights dominate). Prefill is compute-bound: it follows the SM
clock. Tensor parallelism splits weights and work evenly, so the ratio holds per GPU.

Tensor parallelism: every step ends in a collective, so the group advances at its slowest member's
pace; each member's ``duty`` (its own step time over the group's) goes to its GPU, whose power falls
to the wait level for the rest of the step (:mod:`gpuwatch.sim.physics`). The scenario's
``decode_tokens_per_s`` is the rate at full load and full clocks; the roofline scales it.

The HTTP side (:class:`InferenceEndpoint`) serves ``/metrics`` with vLLM's metric names (as in a
real vLLM capture) on a local port, and plays the server's faults: restarts, outages, slowness,
garbage and enormous responses.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from gpuwatch.sim.physics import STEP_S, SimGpu
from gpuwatch.sim.scenario import ServerFault, ServerSpec, SimProcess

log = logging.getLogger(__name__)

_BUSY_LOAD = 0.02
_placeholder_pids = itertools.count(2**22 + 2**20)  # above any Linux pid, distinct from scenario pids
DECODE_COMPUTE_RATIO = 0.8  # compute time / memory time of a full-batch decode step at full clocks
_KV_PER_SEQUENCE = 0.0082  # KV-cache bytes per sequence, of the weights (0.131 GB / 16 GB)
_TOKENS_PER_REQUEST = 256
_MAX_NUM_SEQS = 64
_ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class SimInferenceServer:
    """Token counters of one simulated server, stepped with its GPUs."""

    def __init__(self, spec: ServerSpec, gpus: list[SimGpu]) -> None:
        self.spec = spec
        self.gpus = gpus
        self.started_at_s = 0.0  # simulated time the running process started
        self.counters = {"generation": 0.0, "prompt": 0.0}  # since the process started, as exported
        self.true_tokens = {"generation": 0.0, "prompt": 0.0}  # every token made, across restarts
        self.iterations = 0
        self.batch = 0.0
        self._restarts = sorted((f for f in spec.faults if f.kind == "restart"), key=lambda f: f.at_s)
        # Listed under a placeholder pid until the simulated driver starts the live process that
        # stands for this server's GPU work (gpuwatch.sim.workloads), a child of this process.
        self.pid = next(_placeholder_pids)
        for gpu in gpus:
            gpu.processes.append(SimProcess(pid=self.pid, name=spec.name, used_memory_bytes=spec.used_memory_bytes))
            if gpu is not gpus[0]:
                gpu.burst_follows = gpus[0]

    def fault_active(self, kind: str, time_s: float) -> ServerFault | None:
        for fault in self.spec.faults:
            if fault.kind == kind and fault.at_s <= time_s < fault.at_s + fault.duration_s:
                return fault
        return None

    def running(self, time_s: float) -> bool:
        """False while a restart has the process down."""
        return self.fault_active("restart", time_s) is None

    def rates(self) -> tuple[float, float]:
        """(decode, prefill) tokens per second at the GPUs' current clocks and load; sets each GPU's duty."""
        if any(g.state.lost for g in self.gpus):
            return 0.0, 0.0
        load = sum(g.load for g in self.gpus) / len(self.gpus)
        if load <= _BUSY_LOAD:
            for gpu in self.gpus:
                gpu.duty = gpu.memory_duty = 1.0
            return 0.0, 0.0
        batch = _MAX_NUM_SEQS * load
        times = [decode_step_time(batch, *_clock_fractions(g)) for g in self.gpus]
        group = max(times)  # the collective waits for the slowest member
        for gpu, own in zip(self.gpus, times, strict=True):
            gpu.duty = own / group
            gpu.memory_duty = decode_memory_time(batch, _clock_fractions(gpu)[1]) / group
        full = decode_step_time(_MAX_NUM_SEQS, 1.0, 1.0)
        decode = self.spec.decode_tokens_per_s * (batch / _MAX_NUM_SEQS) * full / group
        sm = min(_clock_fractions(g)[0] for g in self.gpus)
        return decode, self.spec.prefill_tokens_per_s * load * sm

    def step(self, time_s: float) -> None:
        """Advance by one physics step ending at ``time_s`` (after the GPUs have stepped)."""
        while self._restarts and self._restarts[0].at_s <= time_s:
            fault = self._restarts.pop(0)
            self.counters = {kind: 0.0 for kind in self.counters}
            self.started_at_s = fault.at_s + fault.duration_s
        if not self.running(time_s):
            self.batch = 0.0
            for gpu in self.gpus:
                gpu.duty = gpu.memory_duty = 1.0
            return
        decode, prefill = self.rates()
        made = {"generation": decode * STEP_S, "prompt": prefill * STEP_S}
        for kind, tokens in made.items():
            self.counters[kind] += tokens
            self.true_tokens[kind] += tokens
        self.batch = _MAX_NUM_SEQS * sum(g.load for g in self.gpus) / len(self.gpus)
        self.iterations += 1 if decode > 0 else 0

    def true_energy_joules(self) -> float:
        """The energy its GPUs' counters hold (mJ since driver load, in joules)."""
        return sum(g.state.energy_mj for g in self.gpus) / 1000.0

    def exposition(self, epoch: float) -> str:
        """``/metrics`` as vLLM (V1 engine) writes it; ``epoch`` is the wall time of simulated second 0."""
        labels = f'engine="0",model_name="{self.spec.model}"'
        generation, prompt = math.floor(self.counters["generation"]), math.floor(self.counters["prompt"])
        created = epoch + self.started_at_s
        lines = [
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {created:.2f}",
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(round(self.batch))}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.batch / _MAX_NUM_SEQS * 0.8!r}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {float(prompt)}",
            "# HELP vllm:prompt_tokens_created Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_created gauge",
            f"vllm:prompt_tokens_created{{{labels}}} {created!r}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(generation)}",
            "# HELP vllm:generation_tokens_created Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_created gauge",
            f"vllm:generation_tokens_created{{{labels}}} {created!r}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} {float(generation // _TOKENS_PER_REQUEST)}',
            "# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.",
            "# TYPE vllm:iteration_tokens_total histogram",
        ]
        per_step = (generation + prompt) / self.iterations if self.iterations else 0.0
        for bucket in _ITERATION_BUCKETS:
            count = self.iterations if per_step <= bucket else 0
            lines.append(f'vllm:iteration_tokens_total_bucket{{{labels},le="{float(bucket)}"}} {float(count)}')
        lines += [
            f'vllm:iteration_tokens_total_bucket{{{labels},le="+Inf"}} {float(self.iterations)}',
            f"vllm:iteration_tokens_total_count{{{labels}}} {float(self.iterations)}",
            f"vllm:iteration_tokens_total_sum{{{labels}}} {float(generation + prompt)}",
        ]
        return "\n".join(lines) + "\n"


def decode_step_time(batch: float, sm_fraction: float, memory_fraction: float) -> float:
    """One decode step's time over ``batch`` sequences, in units of the weights' read time at full
    memory clock: the roofline's ``max(compute, memory)``."""
    compute_full = DECODE_COMPUTE_RATIO * (1.0 + _KV_PER_SEQUENCE * _MAX_NUM_SEQS) / _MAX_NUM_SEQS
    compute = compute_full * batch / max(sm_fraction, 1e-3)
    return max(compute, decode_memory_time(batch, memory_fraction))


def decode_memory_time(batch: float, memory_fraction: float) -> float:
    """The memory side of :func:`decode_step_time`: the weights and ``batch`` sequences' KV cache read once."""
    return (1.0 + _KV_PER_SEQUENCE * batch) / max(memory_fraction, 1e-3)


def _clock_fractions(gpu: SimGpu) -> tuple[float, float]:
    """(SM, memory) clock as fractions of the maximum."""
    clocks, top = gpu.state.clocks_mhz, gpu.profile.max_clocks_mhz
    return clocks[1] / top[1], clocks[2] / top[2]


class _Library(Protocol):
    """What the endpoint needs of the simulated driver library."""

    @property
    def lock(self) -> threading.RLock: ...

    def advance(self) -> None: ...


class _Clock(Protocol):
    def sim_seconds(self) -> float: ...

    def time(self) -> float: ...


GARBAGE = 'vllm:generation_tokens_total{engine="0" model_name=} twelve\n<html><body>502 Bad Gateway</body></html>\n'


class InferenceEndpoint:
    """Serves a :class:`SimInferenceServer`'s ``/metrics`` on ``127.0.0.1``, faults included."""

    def __init__(
        self,
        server: SimInferenceServer,
        library: _Library,
        clock: _Clock,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.server = server
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                endpoint.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._library, self._clock, self._sleep = library, clock, sleep
        self._httpd = ThreadingHTTPServer(("127.0.0.1", server.spec.port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/metrics"

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        if request.path.split("?")[0] != "/metrics":
            request.send_error(404)
            return
        with self._library.lock:
            self._library.advance()
            now_s = self._clock.sim_seconds()
            epoch = self._clock.time() - now_s
            server = self.server
            if not server.running(now_s) or server.fault_active("down", now_s):
                request.close_connection = True
                return  # the connection closes without a response, like a dead process's port
            text = server.exposition(epoch)
            slow, garbage, huge = (server.fault_active(kind, now_s) for kind in ("slow", "garbage", "huge"))
        if slow is not None:
            self._sleep(slow.delay_s)
        body = (GARBAGE if garbage is not None else text).encode()
        try:
            request.send_response(200)
            request.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            if huge is None:
                request.send_header("Content-Length", str(len(body)))
                request.end_headers()
                request.wfile.write(body)
                return
            request.end_headers()  # no length: the client has to count for itself
            _write_padding(request, int(huge.size_mib * 1024 * 1024))
            request.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should on a response this size

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="gpuwatch-sim-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _write_padding(request: BaseHTTPRequestHandler, size: int) -> None:
    line = b"# " + b"x" * 1021 + b"\n"
    chunk = line * 1024  # 1 MiB of comment lines
    written = 0
    while written < size:
        request.wfile.write(chunk)
        written += len(chunk)
