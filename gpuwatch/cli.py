"""The command line: `gpuwatch serve` and `gpuwatch status`. Thin: parse, wire, render, exit."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import click

from gpuwatch import __version__, config
from gpuwatch.exporter.registry import build_registry
from gpuwatch.exporter.web import DEFAULT_LISTEN_ADDRESS, DEFAULT_PORT, WebServer
from gpuwatch.host import Host, real_host, simulated_host
from gpuwatch.sampler import Sampler
from gpuwatch.sim import scenario as scenarios
from gpuwatch.sim.clock import ManualClock
from gpuwatch.status import render_table, to_document

log = logging.getLogger("gpuwatch")

EXIT_OK = 0
EXIT_UNKNOWN = 3  # Nagios plugin convention: could not read anything
EXIT_USAGE = 2


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return config.parse_duration(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class _Positive(click.ParamType):  # type: ignore[type-arg]
    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if number <= 0:
            self.fail(f"{value!r} must be greater than zero", param, ctx)
        return number


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        stream=sys.stderr,
        force=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gpuwatch")
def main() -> None:
    """GPU telemetry for LLM inference hosts: NVML metrics for Prometheus, and a status check.

    Run `gpuwatch serve --simulate` to try it on a simulated 4-GPU host with no GPU.
    """


# -- serve ----------------------------------------------------------------------------------------


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file; flags override it.")
@click.option(
    "--web.listen-address",
    "listen_address",
    default=DEFAULT_LISTEN_ADDRESS,
    show_default=True,
    help="Address to serve /metrics and /status on: host:port, or :port for all interfaces.",
)
@click.option(
    "--poll-interval",
    "poll_interval_s",
    type=_Duration(),
    default="1s",
    show_default=True,
    help="How often to poll every GPU (e.g. 500ms, 1s, 5s).",
)
@click.option(
    "--process-interval",
    "process_interval_s",
    type=_Duration(),
    default="10s",
    show_default=True,
    help="How often to list GPU processes (a slow NVML call, kept off the fast loop).",
)
@click.option(
    "--simulate",
    "simulate",
    is_flag=False,
    flag_value=scenarios.DEFAULT_SCENARIO,
    default=None,
    metavar="[SCENARIO]",
    help=f"Run on simulated GPUs: a built-in scenario name or a TOML path (default {scenarios.DEFAULT_SCENARIO}).",
)
@click.option(
    "--sim-speed",
    "sim_speed",
    type=_Positive(),
    default=1.0,
    show_default=True,
    help="With --simulate: simulated seconds per wall-clock second.",
)
@click.option(
    "--log.level",
    "log_level",
    type=click.Choice(config.LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Log verbosity (logs go to stderr).",
)
@click.pass_context
def serve(ctx: click.Context, /, config_file: str | None, **flags: Any) -> None:
    """Poll every GPU and serve Prometheus metrics and a JSON status.

    Endpoints: /metrics, /status, /-/healthy, /-/ready. Stops cleanly on SIGTERM or Ctrl-C.
    """
    given = {
        name: value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    try:
        file_values = config.load_file(config_file) if config_file else {}
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    settings = config.build(file_values, given)
    _setup_logging(settings.log_level)
    sys.exit(_serve(settings))


def _serve(settings: config.ServeSettings) -> int:
    host = _open_host(settings.simulate, settings.sim_speed)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and settings.simulate is None:
        log.warning("running as root; gpuwatch needs only read access to /dev/nvidia*")
    sampler = Sampler(host.reader_factory, host.clock, settings.poll_interval_s, settings.process_interval_s)
    registry = build_registry(lambda: sampler.latest)
    try:
        web = WebServer(settings.listen_address, registry, lambda: sampler.latest, sampler.ready.is_set)
    except OSError as exc:
        log.error(
            "cannot listen on %s: %s; choose another with --web.listen-address",
            settings.listen_address,
            exc.strerror,
        )
        return 1
    sampler.on_poll = web.exposition.prerender
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sampler.start()
    web.start()
    log.info(
        "gpuwatch %s on %s: serving %s/metrics every %gs",
        __version__,
        host.description,
        web.url,
        settings.poll_interval_s,
    )
    while not stop.wait(0.5):
        pass
    web.stop()
    sampler.stop(timeout_s=1.0)
    log.info("stopped")
    return EXIT_OK


def _open_host(simulate: str | None, speed: float) -> Host:
    if simulate is None:
        return real_host()
    try:
        return simulated_host(simulate, speed)
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc


# -- status ---------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--url",
    default=f"http://127.0.0.1:{DEFAULT_PORT}",
    show_default=True,
    help="The running daemon to read; if it does not answer, NVML is sampled directly.",
)
@click.option("--direct", is_flag=True, help="Sample NVML in this process; do not ask a daemon.")
@click.option(
    "--simulate",
    "simulate",
    is_flag=False,
    flag_value=scenarios.DEFAULT_SCENARIO,
    default=None,
    metavar="[SCENARIO]",
    help="Sample a simulated host in this process (implies --direct).",
)
@click.option(
    "--sim-at",
    "sim_at_s",
    type=_Duration(),
    default="5m",
    show_default=True,
    help="With --simulate: the simulated time to sample at.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the /status JSON document instead of a table.")
@click.option("--timeout", "timeout_s", type=_Duration(), default="3s", show_default=True, help="HTTP timeout.")
def status(url: str, direct: bool, simulate: str | None, sim_at_s: float, as_json: bool, timeout_s: float) -> None:
    """Show every GPU: temperature and limit, power and cap, clocks, VRAM, ECC, clock events.

    Exit codes: 0 data was read, 3 nothing could be read (NVML down and no daemon).
    """
    _setup_logging("critical")  # what went wrong is printed below, once
    doc: dict[str, Any] | None = None
    if simulate is None and not direct:
        doc = _fetch(url, timeout_s)
    if doc is None:
        doc = _sample_directly(simulate, sim_at_s)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_table(doc))
    if not doc.get("nvml_up"):
        click.echo(f"gpuwatch: cannot read GPUs: {doc.get('nvml_error')}", err=True)
        sys.exit(EXIT_UNKNOWN)
    sys.exit(EXIT_OK)


def _fetch(url: str, timeout_s: float) -> dict[str, Any] | None:
    target = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as response:
            doc: dict[str, Any] = json.load(response)
            return doc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.debug("no daemon at %s (%s); sampling NVML directly", target, exc)
        return None


def _sample_directly(simulate: str | None, sim_at_s: float) -> dict[str, Any]:
    if simulate is None:
        host = real_host()
    else:
        clock = ManualClock()
        try:
            host = simulated_host(simulate, clock=clock)
        except scenarios.ScenarioError as exc:
            raise click.UsageError(str(exc)) from exc
        clock.advance(sim_at_s)
    sampler = Sampler(host.reader_factory, host.clock)
    snapshot = sampler.poll_once()
    sampler.stop()
    return to_document(snapshot)
