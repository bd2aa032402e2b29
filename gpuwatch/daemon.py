"""`gpuwatch serve` at run time: wire sampler, exporter and systemd together; stop and reload.

Signals: SIGTERM and SIGINT stop the daemon; SIGHUP re-reads the config file, the environment and
the web config file and applies what can change without a restart (poll and process intervals, collector switches,
log level, TLS and users). Polling and serving never pause, so a reload drops no metrics; a reload
that fails validation keeps the running config and logs why.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gpuwatch import __version__, collectors, config, logsetup
from gpuwatch.exporter.web import WebServer
from gpuwatch.page.routes import page_routes
from gpuwatch.runtime import ProxyListenError, Runtime, RuntimeOptions, assemble
from gpuwatch.sampler import Sampler
from gpuwatch.sdnotify import Notifier, Watchdog, watchdog_interval_s
from gpuwatch.webconfig import WebConfigError, WebConfigSource

log = logging.getLogger("gpuwatch")

EXIT_OK = 0
EXIT_FAILURE = 1


SWITCH_INTERVAL_S = 0.0005


def run(settings: config.ServeSettings, reread: Callable[[], config.ServeSettings]) -> int:
    """Serve until SIGTERM/SIGINT; ``reread`` builds fresh settings on SIGHUP (may raise ConfigError).

    ``settings.web_config_file`` must already have been checked (:func:`gpuwatch.webconfig.load`),
    and ``settings.simulate`` loaded once (a broken scenario raises ScenarioError here).
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0 and settings.simulate is None:
        log.warning("running as root; gpuwatch needs only read access to /dev/nvidia*")
    # A scrape thread waits for the GIL while the poll loop or a rendering runs; CPython hands it
    # over only every switch interval (5 ms by default), several times per scrape. A shorter
    # interval bounds that wait (benchmarks/scrape.py: /metrics p99 with 20 scrapers).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with assemble(runtime_options(settings)) as rt:
        return _serve(settings, reread, rt)


def runtime_options(settings: config.ServeSettings) -> RuntimeOptions:
    """What the runtime needs of the serve settings."""
    return RuntimeOptions(
        simulate=settings.simulate,
        sim_speed=settings.sim_speed,
        poll_interval_s=settings.poll_interval_s,
        process_interval_s=settings.process_interval_s,
        health=settings.health,
        tokens=settings.tokens,
        tokens_window_s=settings.tokens_window_s,
        event_thread=True,
        collectors=settings.collectors,
        pod_resources_socket=settings.pod_resources_socket,
        pods_refresh_s=settings.pods_refresh_s,
        cost=settings.cost,
        xid_log=settings.xid_log,
    )


def _serve(settings: config.ServeSettings, reread: Callable[[], config.ServeSettings], rt: Runtime) -> int:
    notifier = Notifier()
    web_config = WebConfigSource(settings.web_config_file)
    try:  # bound before the simulated servers take their ports, so none can take this one
        web = WebServer(
            settings.listen_address,
            rt.exposition,
            rt.status_document,
            rt.ready,
            web_config,
            settings.limits,
            routes=page_routes(rt.status_document, rt.history, settings.tuner_result_file),
        )
    except OSError as exc:
        log.error(
            "cannot listen on %s: %s; choose another with --web.listen-address",
            settings.listen_address,
            exc.strerror,
        )
        return EXIT_FAILURE
    current_web = web_config.current()
    if current_web.users and current_web.ssl_context is None:
        log.warning("basic auth without TLS: passwords cross the network in clear text; add tls_server_config")
    stop, hangup, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            hangup.set()
        else:
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop.set()
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        rt.start()
    except ProxyListenError as exc:
        log.error("%s; choose another listen address in its [[tokens]] table", exc)
        return EXIT_FAILURE
    for endpoint in rt.servers:
        log.info("simulated %s server on %s", endpoint.server.spec.kind, endpoint.url)
    web.start()
    log.info(
        "gpuwatch %s on %s: serving %s/metrics every %gs",
        __version__,
        rt.host.description,
        web.url,
        settings.poll_interval_s,
    )
    watchdog = _start_watchdog(notifier, rt.sampler)
    announced = False
    while not stop.is_set():
        wake.wait(0.5 if announced else 0.05)
        wake.clear()
        if not announced and rt.sampler.ready.is_set():
            notifier.send(READY=1, STATUS=_describe(rt.sampler))
            announced = True
        if hangup.is_set() and not stop.is_set():
            hangup.clear()
            settings = _reload(settings, reread, rt, web_config, notifier)
    notifier.send(STOPPING=1)
    if watchdog is not None:
        watchdog.stop()
    web.stop()
    log.info("stopped")
    return EXIT_OK


def _start_watchdog(notifier: Notifier, sampler: Sampler) -> Watchdog | None:
    interval_s = watchdog_interval_s()
    if interval_s is None or not notifier.enabled:
        return None
    watchdog = Watchdog(notifier, interval_s, lambda: sampler.latest.polls_total, lambda: sampler.poll_interval_s)
    watchdog.start()
    log.debug("pinging the systemd watchdog while polls progress (WatchdogSec=%gs)", interval_s)
    return watchdog


def _describe(sampler: Sampler) -> str:
    latest = sampler.latest
    if not latest.nvml_up:
        return f"NVML unavailable ({latest.nvml_error}); retrying"
    up = sum(1 for gpu in latest.gpus if gpu.up)
    return f"polling {len(latest.gpus)} GPUs ({up} up) every {sampler.poll_interval_s:g}s"


def _reload(
    current: config.ServeSettings,
    reread: Callable[[], config.ServeSettings],
    rt: Runtime,
    web_config: WebConfigSource,
    notifier: Notifier,
) -> config.ServeSettings:
    """Apply new settings where they can change live; on any error keep ``current``."""
    notifier.reloading()
    try:
        new = reread()
        web_config.reload(new.web_config_file)
    except Exception as exc:  # whatever the files hold, the daemon serves on: one line, the old config
        why = str(exc) if isinstance(exc, config.ConfigError | WebConfigError) else f"{type(exc).__name__}: {exc}"
        log.error("reload failed, keeping the running config: %s", why)
        log.debug("reload failed", exc_info=True)
        notifier.send(READY=1, STATUS=f"reload failed: {why}")
        return current
    for name in config.RESTART_FIELDS:
        if getattr(new, name) != getattr(current, name):
            key = config.key_for_field(name)
            log.warning("%s changed to %r; this takes effect after a restart", key, getattr(new, name))
    new = replace(new, **{name: getattr(current, name) for name in config.RESTART_FIELDS})
    rt.reconfigure(new.poll_interval_s, new.process_interval_s, new.tokens_window_s, new.collectors, new.cost)
    logsetup.set_level(new.log_level)
    log.info(
        "reloaded: polling every %gs, processes every %gs, log level %s, web config %s",
        new.poll_interval_s,
        new.process_interval_s,
        new.log_level,
        new.web_config_file or "none",
    )
    if new.collectors != current.collectors:
        log.info("reloaded: %s", collectors.describe(new.collectors))
    if new.cost != current.cost:
        log.info("reloaded: cost %s", new.cost.summary())
    notifier.send(READY=1, STATUS=_describe(rt.sampler))
    return new
