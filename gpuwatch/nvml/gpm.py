"""GPU Performance Monitoring (GPM): how busy a Hopper-or-newer GPU really is.

NVML's utilization (``nvmlDeviceGetUtilizationRates``, nvidia-smi "GPU-Util") is the share of time
*any* kernel ran: 100 % for a decode step that keeps a few SMs busy. GPM counts what the SMs, tensor
pipes and DRAM did. It works on samples: ``nvmlGpmSampleAlloc`` makes an opaque sample buffer,
``nvmlGpmSampleGet`` (``nvmlGpmMigSampleGet`` for one GPU instance of a MIG-enabled GPU) fills it
with the counters now, and ``nvmlGpmMetricsGet`` turns two samples into metrics over the time
between them (each metric with its own return code). nvidia-smi shows none of it; ``dcgmi dmon -e
1002,1003,1004,1005`` (DCGM's profiling fields) reads the same counters.

Per poll and GPU (or GPU instance) :class:`GpmStream` makes one sample get and one metrics get,
reusing two buffers allocated once and freed on :meth:`GpmStream.close`. :func:`window_action`
decides each poll whether to measure, skip (under 100 ms since the baseline sample: too short a
window to mean much) or reseed (the first sample, or a gap longer than a few intervals, after which
an average over the gap would hide what happened in it).

nvidia-ml-py has had the GPM calls and metric ids used here since before the floor gpuwatch
allows (12.570.86, where ``NVML_GPM_METRIC_MAX`` is 98; 477 in 13.615); :data:`AVAILABLE` is false
on a binding without them, and GPM is then simply not read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import pynvml

MIB = 1024 * 1024
MIN_WINDOW_S = 0.1  # shorter windows are skipped: the baseline stays, the previous metrics stand
RESEED_AFTER_INTERVALS = 4.0  # a gap over this many times the previous window reseeds

# gpuwatch's name for each ratio metric and its GPM id (percent 0-100 in NVML; a ratio 0-1 here).
RATIO_METRICS: tuple[tuple[str, str], ...] = (
    ("sm_active", "NVML_GPM_METRIC_SM_UTIL"),  # share of SMs busy (DCGM's SM_ACTIVE, 1002)
    ("sm_occupancy", "NVML_GPM_METRIC_SM_OCCUPANCY"),  # resident warps vs the maximum (DCGM 1003)
    ("tensor_active", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),  # any tensor pipe (DCGM 1004)
    ("dram_active", "NVML_GPM_METRIC_DRAM_BW_UTIL"),  # DRAM bandwidth vs peak (DCGM 1005)
    ("fp16_active", "NVML_GPM_METRIC_FP16_UTIL"),  # non-tensor FP16 pipe
    ("fp32_active", "NVML_GPM_METRIC_FP32_UTIL"),
    ("fp64_active", "NVML_GPM_METRIC_FP64_UTIL"),
)
# (link, direction) and GPM id of the byte rates (MiB/s in NVML; bytes/s here).
RATE_METRICS: tuple[tuple[tuple[str, str], str], ...] = (
    (("pcie", "transmit"), "NVML_GPM_METRIC_PCIE_TX_PER_SEC"),
    (("pcie", "receive"), "NVML_GPM_METRIC_PCIE_RX_PER_SEC"),
    (("nvlink", "transmit"), "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC"),
    (("nvlink", "receive"), "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC"),
)
# Per GPU instance of a MIG-enabled GPU: the busyness ratios (no PCIe or NVLink: those are the parent's).
MIG_RATIO_METRICS = ("sm_active", "sm_occupancy", "tensor_active", "dram_active")

_CALLS = ("nvmlGpmSampleAlloc", "nvmlGpmSampleFree", "nvmlGpmSampleGet", "nvmlGpmMetricsGet")
AVAILABLE = all(hasattr(pynvml, name) for name in (*_CALLS, "c_nvmlGpmMetricsGet_t")) and all(
    hasattr(pynvml, constant) for _, constant in (*RATIO_METRICS, *RATE_METRICS)
)


class GpmMetrics:
    """One window's metrics: ``ratios`` by gpuwatch name (0-1) and ``rates`` by (link, direction) in bytes/s."""

    __slots__ = ("rates", "ratios")

    def __init__(self, ratios: Mapping[str, float], rates: Mapping[tuple[str, str], float]) -> None:
        self.ratios = ratios
        self.rates = rates


EMPTY = GpmMetrics({}, {})


def window_action(baseline_s: float | None, now_s: float, previous_window_s: float | None) -> str:
    """What to do with a poll at ``now_s`` given the baseline sample's time and the last window's length.

    ``seed``: take a sample as the new baseline and report nothing (no baseline yet, the clock went
    back, or the gap since the baseline is over :data:`RESEED_AFTER_INTERVALS` windows); ``skip``:
    under :data:`MIN_WINDOW_S` since the baseline, keep it and the last metrics; ``measure``.
    """
    if baseline_s is None or now_s < baseline_s:
        return "seed"
    window = now_s - baseline_s
    if window < MIN_WINDOW_S:
        return "skip"
    if previous_window_s is not None and window > RESEED_AFTER_INTERVALS * max(previous_window_s, MIN_WINDOW_S):
        return "seed"
    return "measure"


def _ids(names: tuple[str, ...]) -> list[int]:
    return [int(getattr(pynvml, name)) for name in names]


class GpmStream:
    """Samples of one GPU (or of one GPU instance): two buffers, swapped each poll.

    ``get`` fills a sample (``nvmlGpmSampleGet`` bound to a handle, or ``nvmlGpmMigSampleGet`` bound
    to a handle and a GPU instance id). ``mig`` selects the per-instance metric set. NVML errors
    propagate to the caller (the reader's error policy); after one the baseline is dropped, so the
    next poll reseeds rather than measure across the failure.
    """

    def __init__(self, get: Callable[[Any], Any], mig: bool = False) -> None:
        self._get = get
        ratio_names = tuple(c for n, c in RATIO_METRICS if not mig or n in MIG_RATIO_METRICS)
        rate_names = () if mig else tuple(c for _, c in RATE_METRICS)
        self._ratio_keys = {i: n for i, (n, c) in zip(_ids(ratio_names), _named(ratio_names), strict=True)}
        self._rate_keys = {i: k for i, k in zip(_ids(rate_names), _rate_keys(rate_names), strict=True)}
        self._request = pynvml.c_nvmlGpmMetricsGet_t()
        self._request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        ids = [*self._ratio_keys, *self._rate_keys]
        self._request.numMetrics = len(ids)
        for slot, metric_id in enumerate(ids):
            self._request.metrics[slot].metricId = metric_id
        self._samples: list[Any] = []
        self._baseline_s: float | None = None
        self._window_s: float | None = None
        self._last = EMPTY

    def poll(self, now_s: float) -> GpmMetrics:
        """This poll's metrics (see :func:`window_action`); EMPTY while there are none."""
        action = window_action(self._baseline_s, now_s, self._window_s)
        if action == "skip":
            return self._last
        if not self._samples:
            self._samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
        baseline, current = self._samples
        try:
            self._get(current)
            if action == "seed" or self._baseline_s is None:
                self._window_s, self._last = None, EMPTY
            else:
                self._last = self._metrics(baseline, current)
                self._window_s = now_s - self._baseline_s
        except Exception:
            self._baseline_s, self._window_s, self._last = None, None, EMPTY
            raise
        self._samples = [current, baseline]
        self._baseline_s = now_s
        return self._last

    def _metrics(self, baseline: Any, current: Any) -> GpmMetrics:
        request = self._request
        request.sample1, request.sample2 = baseline, current
        pynvml.nvmlGpmMetricsGet(request)
        ratios: dict[str, float] = {}
        rates: dict[tuple[str, str], float] = {}
        for slot in range(request.numMetrics):
            metric = request.metrics[slot]
            if metric.nvmlReturn != pynvml.NVML_SUCCESS:
                continue  # this metric on this GPU: not reported
            if (name := self._ratio_keys.get(metric.metricId)) is not None:
                ratios[name] = min(1.0, max(0.0, metric.value / 100.0))
            elif (key := self._rate_keys.get(metric.metricId)) is not None:
                rates[key] = max(0.0, metric.value * MIB)
        return GpmMetrics(ratios, rates)

    def close(self) -> None:
        """Free both sample buffers (errors ignored: after a driver reload they are gone anyway)."""
        samples, self._samples = self._samples, []
        for sample in samples:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlGpmSampleFree(sample)
        self._baseline_s = self._window_s = None


def _named(constants: tuple[str, ...]) -> list[tuple[str, str]]:
    by_constant = {c: n for n, c in RATIO_METRICS}
    return [(by_constant[c], c) for c in constants]


def _rate_keys(constants: tuple[str, ...]) -> list[tuple[str, str]]:
    by_constant = {c: k for k, c in RATE_METRICS}
    return [by_constant[c] for c in constants]


def supported(handle: Any) -> bool:
    """nvmlGpmQueryDeviceSupport: whether this GPU has GPM (Hopper and newer). Raises NVMLError
    (FunctionNotFound on drivers before R520, which the reader treats as unsupported)."""
    return bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
