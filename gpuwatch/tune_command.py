"""The `gpuwatch tune` commands (registered in :mod:`gpuwatch.cli`): parse, wire, print, exit.

The work is in :mod:`gpuwatch.tuner`; the decisions in :mod:`gpuwatch.analysis.tuning`. Like the
rest of the command line it imports pynvml only when a command runs, so `--help` always works.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from gpuwatch.analysis.tuning import limits_between
from gpuwatch.config import parse_duration
from gpuwatch.sim import scenario as scenarios
from gpuwatch.sim.clock import ManualClock

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

_WATTS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[wW]?\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


class _Quantity(click.ParamType):  # type: ignore[type-arg]
    """A positive number with an optional unit suffix ("250W", "95%"), scaled by ``scale``."""

    def __init__(self, name: str, pattern: re.Pattern[str], example: str, scale: float, most: float) -> None:
        self.name, self._pattern, self._example, self._scale, self._most = name, pattern, example, scale, most
        self._what = "watts" if name == "watts" else f"a {name}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        match = self._pattern.match(str(value))
        if match is None or not 0 < float(match[1]) <= self._most:
            self.fail(f"{value!r}: expected {self._what} such as {self._example}", param, ctx)
        return float(match[1]) * self._scale


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


WATTS = _Quantity("watts", _WATTS, "250W", 1.0, float("inf"))
SHARE = _Quantity("share", _PERCENT, "95%", 0.01, 100.0)


def _gpu_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected GPU indices such as 0,1") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise click.BadParameter(f"{value!r}: expected distinct GPU indices such as 0,1")
    return gpus


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # ends the sweep as Ctrl-C does: limits restored on the way out


@click.group()
def tune() -> None:
    """Tune GPU settings against measured work per joule."""


@tune.command("power-limit")
@click.option("--gpus", "gpus", required=True, callback=_gpu_list, help="GPU indices to tune together, e.g. 0,1.")
@click.option(
    "--source",
    "source",
    default=None,
    help="Token source to measure: a token server's metrics URL, or on a simulated host a simulated "
    "server's name. Without it the GPUs' own work measure is used (busy SM cycles: utilization x SM clock).",
)
@click.option("--from", "low_watts", type=WATTS, default="200W", show_default=True, help="Lowest limit.")
@click.option("--to", "high_watts", type=WATTS, default="300W", show_default=True, help="Highest limit.")
@click.option("--step", "step_watts", type=WATTS, default="25W", show_default=True, help="Step between limits.")
@click.option(
    "--dwell",
    "dwell_s",
    callback=_duration,
    metavar="DURATION",
    default="2m",
    show_default=True,
    help="Measuring time per limit.",
)
@click.option(
    "--min-throughput",
    "min_throughput",
    type=SHARE,
    default="95%",
    show_default=True,
    help="Recommend the best per-joule limit whose throughput is at least this share of the best.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the JSON result to this file (the live page can show it).",
)
@click.option(
    "--simulate",
    "simulate",
    default=None,
    metavar="SCENARIO",
    help="Tune a simulated host (a built-in scenario name or a file) instead of the real driver.",
)
@click.option(
    "--sim-speed",
    "sim_speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated seconds per wall-clock second (with --simulate).",
)
def power_limit(low_watts: float, high_watts: float, step_watts: float, **flags: Any) -> None:
    """Sweep the power limit of GPUS, measure work per joule at each limit, recommend one.

    For each limit from --from to --to it sets the enforced limit on every GPU named
    (nvmlDeviceSetPowerManagementLimit: root or CAP_SYS_ADMIN), waits for power to settle, and
    measures tokens per second and tokens per joule from the energy counters over --dwell. At the
    end, on Ctrl-C, SIGTERM or any error, every GPU gets its original limit back. Progress goes to
    stderr; the curve and the recommendation to stdout.

    \b
    Example, on a simulated host:
      gpuwatch tune power-limit --simulate inference-host --sim-speed 60 --gpus 0,1 --dwell 60s
    """
    try:
        limits = limits_between(low_watts, high_watts, step_watts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    # SIGTERM, and SIGHUP (a dropped SSH session) and SIGQUIT, whose default actions would end the
    # process without restoring, end the sweep as Ctrl-C does: limits restored on the way out.
    stopping = [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    previous = {s: signal.signal(s, _terminate) for s in stopping}
    try:
        code = _run(limits=tuple(limits), **flags)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    sys.exit(code)


def _say(line: str) -> None:
    click.echo(f"gpuwatch tune: {line}", err=True)


def _run(
    gpus: tuple[int, ...],
    source: str | None,
    limits: tuple[float, ...],
    dwell_s: float,
    min_throughput: float,
    as_json: bool,
    output: str | None,
    simulate: str | None,
    sim_speed: float,
) -> int:
    from gpuwatch.nvml.power_limit import PowerLimitControl, PowerLimitError
    from gpuwatch.runtime import RuntimeOptions, assemble, open_host
    from gpuwatch.tokens.source import from_url
    from gpuwatch.tuner import TuneError, TunePlan, Tuner, TuneResult, render

    url_source = source is not None and source.startswith(("http://", "https://"))
    try:
        tokens = (from_url(source),) if url_source and source is not None else ()
    except ValueError as exc:
        raise click.UsageError(f"--source {source!r}: {exc}") from exc
    options = RuntimeOptions(simulate=simulate, sim_speed=sim_speed, tokens=tokens)
    try:
        host = open_host(options)
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    wait: Callable[[float], None]
    if isinstance(host.sim_clock, ManualClock):
        wait = host.sim_clock.advance
    else:
        clock = host.clock
        wait = lambda seconds: time.sleep(clock.to_wall(seconds))  # noqa: E731
    with assemble(options, host=host) as rt:
        rt.start(threads=False)
        source_name = tokens[0].name if tokens else source
        plan = TunePlan(gpus, limits, dwell_s, min_throughput, source=source_name)
        try:
            control = PowerLimitControl()
        except PowerLimitError as exc:
            _say(f"{exc}; not starting")
            return EXIT_FAILED
        try:
            tuner = Tuner(rt, control, plan, wait, _say)
            try:
                originals = tuner.original_limits()
            except TuneError as exc:
                _say(str(exc))
                return EXIT_FAILED
            if source_name is None:
                _say("no --source: measuring the GPUs' own work (busy SM cycles, utilization x SM clock), not tokens")
            original = ", ".join(f"GPU {i} {w:g} W" for i, w in originals.items())
            _say(f"original limits: {original}; they are restored at the end, on Ctrl-C or SIGTERM")
            result = TuneResult(gpus, source_name, originals)
            code = 0
            try:
                tuner.run(result)
            except KeyboardInterrupt:
                _say("interrupted")
                code = EXIT_INTERRUPTED
            except TuneError as exc:
                _say(f"stopped: {exc}")
                code = EXIT_FAILED
        finally:
            control.close()
    for error in result.restore_errors:
        _say(f"FAILED TO RESTORE A POWER LIMIT: {error}; set it back by hand (nvidia-smi -i N -pl W)")
    if result.restored:
        _say(f"restored original limits: {original}")
    else:
        code = EXIT_FAILED
    doc = result.to_json()
    if output is not None:
        try:
            with open(output, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2)
                out.write("\n")
        except OSError as exc:
            _say(f"cannot write {output}: {exc.strerror}")
            code = code or EXIT_FAILED
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        unit = "tokens" if source_name is not None else "Gcycles"
        for line in render(result, unit):
            click.echo(line)
    return code
