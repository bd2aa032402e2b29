"""The command line: `gpuwatch serve`, `status`, `check-config` and `install-service`.

Thin: parse, wire, render, exit."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from gpuwatch import __version__, client, collectors, config, install, logsetup, webconfig
from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.exporter.address import DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_REQUESTS, DEFAULT_PORT
from gpuwatch.page import tuner as tuner_result
from gpuwatch.sim import scenario as scenarios
from gpuwatch.sim.clock import ManualClock
from gpuwatch.status import clean_text, exit_code, render_nagios, render_table, to_document
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.source import from_url as source_from_url

# gpuwatch.daemon and .runtime import pynvml (and its internals, gpuwatch.nvml.prepared): they are
# imported where a command runs, so `--help` works whatever nvidia-ml-py is installed.

log = logging.getLogger("gpuwatch")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_UNKNOWN = 3  # Nagios plugin convention: could not read anything
CAPTURE_SIMULATED_AT_S = 60.0  # a simulated host is captured under way, not at its first instant
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h); the unit's RestartPreventExitStatus= stops a restart loop


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
    logsetup.setup(level)


def _config_error(message: str) -> NoReturn:
    """A config that cannot be used: one line on stderr, no traceback, exit 78."""
    click.echo(f"gpuwatch: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _why(exc: Exception) -> str:
    """One line for a config that cannot be used. Reading a config raises ConfigError (and its kin)
    for anything wrong with it; anything else is a gpuwatch bug the config tripped, still exit 78."""
    if isinstance(exc, config.ConfigError | webconfig.WebConfigError | scenarios.ScenarioError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"cannot use the config: {type(exc).__name__}: {first} (a gpuwatch bug; please report it)"


def _simulate_option(help_text: str) -> Callable[[F], F]:
    """``--simulate [SCENARIO]``: a flag that takes an optional scenario name or path."""
    return click.option(
        "--simulate",
        "simulate",
        is_flag=False,
        flag_value=scenarios.DEFAULT_SCENARIO,
        default=None,
        metavar="[SCENARIO]",
        help=help_text,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gpuwatch")
def main() -> None:
    """GPU telemetry for LLM inference hosts: NVML metrics for Prometheus, and a status check.

    Run `gpuwatch serve --simulate` to try it on a simulated 4-GPU host with no GPU.
    """


# -- serve ----------------------------------------------------------------------------------------


def _collector_options(command: F) -> F:
    """node_exporter's switches, one pair per collector in exporter/registry.py: ``--collector.NAME`` /
    ``--no-collector.NAME``, ``--collector.disable-defaults`` and ``--[no-]collector.processes.pid``.
    Their parameters are named ``collector__NAME`` (``__`` for the key's dots: see :func:`_setting_of`)."""
    options = [
        click.option(
            "--collector.disable-defaults",
            "collector__disable_defaults",
            is_flag=True,
            default=False,
            help="Turn every collector off but those turned on by --collector.NAME (gpuwatch's own series stay).",
        ),
        click.option(
            "--collector.lean-set",
            "collector__lean_set",
            is_flag=True,
            default=False,
            help="The lean set: at most 30 series per GPU, every one the shipped alerts and dashboards read "
            "(README: Collectors); --collector.NAME still adds to it.",
        ),
        *(
            click.option(
                f"--collector.{name}/--no-collector.{name}",
                f"collector__{name}",
                default=collectors.default_enabled(name),
                help=f"The {name} collector: {collectors.description(name)} "
                f"(default {'on' if collectors.default_enabled(name) else 'off'}).",
            )
            for name in collectors.SWITCHABLE
        ),
        click.option(
            "--collector.processes.pid/--no-collector.processes.pid",
            "collector__processes__pid",
            default=True,
            help="Label per-process series with pid; without it, one series per process name and user (no churn).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _setting_of(param: str) -> str:
    """The settings key a flag's parameter sets: ``collector__processes__pid`` -> ``collectors.processes.pid``."""
    if param.startswith("collector__"):
        return "collectors." + param.removeprefix("collector__").replace("__", ".")
    return param


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="GPUWATCH_CONFIG",
    help="TOML config file (env GPUWATCH_CONFIG); GPUWATCH_* variables override it, flags override both.",
)
@click.option(
    "--web.listen-address",
    "listen_address",
    default=DEFAULT_LISTEN_ADDRESS,
    show_default=True,
    help="Address to serve /metrics and /status on: host:port, or :port for all interfaces.",
)
@click.option(
    "--web.config.file",
    "web_config_file",
    type=click.Path(dir_okay=False),
    help="exporter-toolkit web config (YAML): TLS certificate and key, client CA, basic-auth users.",
)
@click.option(
    "--web.max-requests",
    "max_requests",
    type=click.IntRange(1, 1024),
    default=DEFAULT_MAX_REQUESTS,
    show_default=True,
    help="Requests served at once; more wait for a slot (503 after --web.read-timeout). "
    "At most 10x this many connections are open at once; more are closed at once.",
)
@click.option(
    "--web.read-timeout",
    "read_timeout_s",
    type=_Duration(),
    default="10s",
    show_default=True,
    help="Time a client has for the TLS handshake and the request head.",
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
@_simulate_option(
    "Run on simulated GPUs: a built-in scenario name, a TOML path, or a saved `nvidia-smi -q` (.txt) "
    f"to simulate those cards (default {scenarios.DEFAULT_SCENARIO})."
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
    "--tokens",
    "tokens",
    multiple=True,
    metavar="URL",
    callback=lambda ctx, param, urls: _token_sources(urls),
    help="An inference server's metrics URL to count tokens from (repeatable); its kind and GPUs are found "
    "automatically. [[tokens]] tables in the config file say more.",
)
@click.option(
    "--tokens-window",
    "tokens_window_s",
    type=_Duration(),
    default="60s",
    show_default=True,
    help="Window of the tokens-per-joule figures (10s or more).",
)
@click.option(
    "--log.level",
    "log_level",
    type=click.Choice(config.LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Log verbosity (logs go to stderr; journald format under systemd).",
)
@click.option(
    "--web.tuner-result",
    "tuner_result_file",
    type=click.Path(dir_okay=False),
    help="A `gpuwatch tune power-limit --json` result: the page at / draws its curve (re-read when it changes).",
)
@click.option(
    "--kubernetes.pod-resources-socket",
    "pod_resources_socket",
    default="/var/lib/kubelet/pod-resources/kubelet.sock",
    show_default=True,
    help="The kubelet's PodResources socket, for the pod and container of each GPU (pods collector).",
)
@click.option(
    "--kubernetes.refresh-interval",
    "pods_refresh_s",
    type=_Duration(),
    default="30s",
    show_default=True,
    help="How often pod attribution asks the kubelet and reads GPU processes' cgroups.",
)
@click.option(
    "--xid-log",
    "xid_log",
    default="auto",
    show_default=True,
    metavar="SOURCE",
    help="Where to read the kernel log's Xid lines (Xid 79 and others NVML never delivers): auto, kmsg "
    "(/dev/kmsg), journal (journalctl), off, or a file path. With --simulate: auto reads the simulated "
    "host's own kernel log; a path is where it writes it.",
)
@_collector_options
@click.pass_context
def serve(ctx: click.Context, /, config_file: str | None, **flags: Any) -> None:
    """Poll every GPU and serve Prometheus metrics and a JSON status.

    Endpoints: /metrics, /status, /-/healthy, /-/ready. Stops cleanly on SIGTERM or Ctrl-C;
    SIGHUP reloads the config. A config that cannot be used exits with status 78.
    """
    given = {
        _setting_of(name): value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }

    def reread() -> config.ServeSettings:
        return config.load(config_file, given, os.environ)

    try:
        settings = reread()
        if settings.web_config_file:
            webconfig.load(settings.web_config_file)
    except Exception as exc:
        _config_error(_why(exc))
    _setup_logging(settings.log_level)
    if settings.tuner_result_file:
        # Optional and often named before the tuner first runs: the page shows its error and draws
        # it once it is there and good (check-config refuses it, with exit 78).
        try:
            tuner_result.load(settings.tuner_result_file)
        except tuner_result.TunerResultError as exc:
            log.warning("%s; the page at / shows this until the file is there and good", exc)
    for name in config.ignored_env(os.environ):
        log.warning("environment variable %s is not a gpuwatch setting; ignored", name)
    from gpuwatch import daemon

    try:
        code = daemon.run(settings, reread)  # loads the scenario once, when it builds the host
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    sys.exit(code)


@main.command("check-config")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="GPUWATCH_CONFIG",
    default=install.CONFIG_PATH,
    show_default=True,
    help="TOML config file to check (env GPUWATCH_CONFIG).",
)
@click.option("--web.config.file", "web_config_file", type=click.Path(dir_okay=False), help="Web config to check too.")
def check_config(config_file: str, web_config_file: str | None) -> None:
    """Check a config file, GPUWATCH_* variables and the web config file, as `serve` would read them.

    Prints the settings in force and exits 0, or prints one line naming the file, key and value
    and exits 78.
    """
    try:
        settings = config.load(config_file, {"web_config_file": web_config_file} if web_config_file else {}, os.environ)
        web = webconfig.load(settings.web_config_file) if settings.web_config_file else None
        if settings.simulate is not None:
            scenarios.load(settings.simulate)
        if settings.tuner_result_file:
            tuner_result.load(settings.tuner_result_file)
    except Exception as exc:
        _config_error(_why(exc))
    for name in config.ignored_env(os.environ):
        click.echo(f"gpuwatch: warning: environment variable {name} is not a gpuwatch setting; ignored", err=True)
    click.echo(f"{config_file}: OK")
    for key, flag in config.FLAG_FOR_KEY.items():
        if key != "tokens" and not key.startswith("collectors."):  # the switches: one line below
            click.echo(f"  {key} = {getattr(settings, config.field_for_key(key))!r}  ({flag})")
    click.echo(f"  {collectors.describe(settings.collectors)}")
    for source in settings.tokens:
        gpus = "auto" if source.gpus is None else ", ".join(map(str, source.gpus))
        click.echo(f"  token source {source.name!r}: {source.shown_url}, preset {source.preset}, GPUs {gpus}")
    click.echo(f"  cost: {settings.cost.summary()}")
    if web is not None:
        tls = "TLS" if web.ssl_context else "plain HTTP"
        click.echo(f"  web config: {tls}, {len(web.users)} basic-auth users")


@main.command("install-service")
@click.option(
    "--root", type=click.Path(file_okay=False), default="/", show_default=True, help="Install below this root."
)
@click.option(
    "--bin",
    "executable",
    type=click.Path(dir_okay=False),
    default=None,
    help="The gpuwatch executable for ExecStart= (default: the one running now).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config and defaults file too.")
@click.option(
    "--force-path",
    is_flag=True,
    help="Write ExecStart= even where the unit's sandbox hides it or it does not exist (yet).",
)
def install_service(root: str, executable: str | None, force: bool, force_path: bool) -> None:
    """Install the systemd unit, its user, a defaults file and a default config.

    Writes /etc/systemd/system/gpuwatch.service, /etc/sysusers.d/gpuwatch.conf,
    /etc/default/gpuwatch and /etc/gpuwatch/gpuwatch.toml (the last two only if absent), then
    prints the commands that create the user and start the service. Refuses (exit 78) an executable
    the unit could not start: missing, not executable, or under a path its sandbox hides.
    """
    executable = executable or install.current_executable()
    problem = None if force_path else install.exec_problem(executable)
    if problem is not None:
        click.echo(f"gpuwatch: cannot install: {problem}; {install.WHAT_TO_DO}", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        written = install.install(root, executable, force)
    except OSError as exc:
        click.echo(f"gpuwatch: cannot install: {exc}", err=True)
        sys.exit(1)
    for path, action in written:
        click.echo(f"{action:>9} {path}")
    click.echo("\nnext: systemd-sysusers && systemctl daemon-reload && systemctl enable --now gpuwatch")


def _token_sources(urls: tuple[str, ...]) -> tuple[SourceConfig, ...]:
    try:
        return tuple(source_from_url(url) for url in urls)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tokens") from exc


# -- status ---------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--url",
    default=f"http://127.0.0.1:{DEFAULT_PORT}",
    show_default=True,
    help="The running daemon to read (http:// or https://); if none answers, NVML is sampled directly.",
)
@click.option("--direct", is_flag=True, help="Sample NVML in this process; do not ask a daemon.")
@_simulate_option(
    "Sample a simulated host in this process (implies --direct): a scenario name or path, or an `nvidia-smi -q` .txt."
)
@click.option(
    "--sim-at",
    "sim_at_s",
    type=_Duration(),
    default="5m",
    show_default=True,
    help="With --simulate: the simulated time to judge at (the health window before it is replayed).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="With --direct or --simulate: take the [health] thresholds and [cost] prices from this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the /status JSON document instead of a table.")
@click.option("--nagios", is_flag=True, help="Print one Nagios plugin line with performance data.")
@click.option(
    "--watch",
    "watch_s",
    is_flag=False,
    flag_value="2s",
    default=None,
    type=_Duration(),
    metavar="[INTERVAL]",
    help="Refresh in place every INTERVAL (default 2s) until Ctrl-C.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=_Duration(),
    default="10s",
    show_default=True,
    help="The most the whole check may take (each refresh with --watch), in every mode; "
    "past it: UNKNOWN, exit 3, naming what hung.",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False),
    help="With an https:// --url: the CA that signed the daemon's certificate.",
)
@click.option(
    "--cert-file", type=click.Path(dir_okay=False), help="A client certificate, for a daemon that asks for one (mTLS)."
)
@click.option(
    "--key-file", type=click.Path(dir_okay=False), help="The client certificate's key (if not in --cert-file)."
)
@click.option("--user", help="Basic-auth user; the password comes from --password-file or --password-env.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="A file holding the basic-auth password.")
@click.option("--password-env", metavar="VAR", help="An environment variable holding the basic-auth password.")
def status(
    url: str,
    direct: bool,
    simulate: str | None,
    sim_at_s: float,
    config_file: str | None,
    as_json: bool,
    nagios: bool,
    watch_s: float | None,
    timeout_s: float,
    **secured: str | None,
) -> None:
    """Say whether each GPU is healthy and why; show its temperature, power, clocks, VRAM and ECC.

    The first line is the host's verdict. Exit codes follow the Nagios plugin convention:
    0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (nothing could be read, the daemon's data is stale,
    or the check ran past --timeout).
    """
    _setup_logging("critical")  # what went wrong is printed below, once
    context = click.get_current_context()
    url_given = context.get_parameter_source("url") is not click.core.ParameterSource.DEFAULT
    health, cost = HealthThresholds(), CostSettings()
    if config_file:
        try:
            from_file = config.build(config.load_file(config_file), {})
            health, cost = from_file.health, from_file.cost
        except config.ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
    daemon = None
    if simulate is None and not direct:
        daemon = _daemon(url, **secured)
        url_given = url_given or any(secured.values())
    elif any(secured.values()):
        raise click.UsageError("--ca-file, --cert-file, --key-file and --user are for reading a daemon")

    def read(progress: _Progress) -> dict[str, Any]:
        doc = _fetch(daemon, timeout_s, progress, url_given) if daemon is not None else None
        return doc if doc is not None else _sample_directly(simulate, sim_at_s, health, progress, cost)

    def show(doc: dict[str, Any]) -> None:
        try:
            if as_json:
                text = json.dumps(doc, indent=2)
            elif nagios:
                text = render_nagios(doc)
            else:
                text = render_table(doc, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a document from elsewhere
            where = daemon.status_url if daemon is not None else "the sample"
            _unknown(f"{where}: not a /status document gpuwatch can read ({clean_text(repr(exc))})", nagios, hung=False)
        click.echo(text)
        if not doc.get("nvml_up") and not nagios:
            click.echo(f"gpuwatch: cannot read GPUs: {doc.get('nvml_error')}", err=True)

    if watch_s is None:
        try:
            doc = _within(timeout_s, read, nagios)
        except KeyboardInterrupt:
            _exit_now(EXIT_UNKNOWN)  # nothing read; the reading thread may be in a call
        show(doc)
        sys.exit(exit_code(doc))
    doc = {}
    try:
        while True:
            doc = _within(timeout_s, read, nagios)
            if sys.stdout.isatty():
                click.echo("\033[H\033[2J", nl=False)  # home and clear: refresh in place
            show(doc)
            time.sleep(watch_s)
    except KeyboardInterrupt:  # the last refresh's verdict
        _exit_now(exit_code(doc) if doc else EXIT_UNKNOWN)


def _daemon(
    url: str,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    user: str | None,
    password_file: str | None,
    password_env: str | None,
) -> client.Daemon:
    """The daemon to read, with its TLS and basic-auth settings; the password never on the command line."""
    credentials = None
    if user is not None:
        if ":" in user:
            raise click.BadParameter("a basic-auth user name cannot hold ':'", param_hint="--user")
        credentials = client.Credentials(user, _password(password_file, password_env))
    elif password_file or password_env:
        raise click.UsageError("--password-file and --password-env go with --user")
    try:
        return client.Daemon(url, ca_file, cert_file, key_file, credentials)
    except client.ClientError as exc:
        raise click.UsageError(str(exc)) from None


def _password(password_file: str | None, password_env: str | None) -> bytes:
    if (password_file is None) == (password_env is None):
        raise click.UsageError("--user needs its password from one of --password-file or --password-env")
    if password_env is not None:
        if password_env not in os.environ:
            raise click.UsageError(f"--password-env: {password_env} is not set")
        return os.fsencode(os.environ[password_env])
    try:
        with open(str(password_file), "rb") as f:
            return f.read(4096).rstrip(b"\r\n")  # a password, not a file to slurp whole
    except OSError as exc:
        raise click.UsageError(f"--password-file {password_file}: {exc.strerror}") from None


class _Progress:
    """What a status read is doing now, for the line that says what hung."""

    doing = "starting"


def _within(timeout_s: float, read: Callable[[_Progress], dict[str, Any]], nagios: bool) -> dict[str, Any]:
    """``read`` on a thread of its own, waited for ``timeout_s`` at most (exit 3 past it).

    An NVML call made in this process cannot be interrupted, and neither can a socket read be
    made to honour one deadline across a trickling server: so the read runs on a daemon thread,
    and past the deadline this process says what it was doing and exits without waiting for it.
    """
    progress = _Progress()
    outcome: list[tuple[dict[str, Any] | None, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((read(progress), None))
        except BaseException as exc:  # handed to the waiting thread, and raised there
            outcome.append((None, exc))

    thread = threading.Thread(target=run, name="gpuwatch-status-read", daemon=True)
    thread.start()
    thread.join(timeout_s)  # Ctrl-C is raised here, to the caller
    if not outcome:
        _unknown(f"timed out after {timeout_s:g} s {progress.doing}", nagios, hung=True)
    doc, error = outcome[0]
    if isinstance(error, client.NotAStatus):
        _unknown(str(error), nagios, hung=False)  # something else listens there: say so, sample nothing
    if error is not None:
        raise error
    assert doc is not None
    return doc


def _unknown(line: str, nagios: bool, hung: bool) -> NoReturn:
    """UNKNOWN, exit 3; when ``hung``, without waiting for the reading thread, which may never return."""
    if nagios:
        click.echo(f"GPUWATCH UNKNOWN - {line}")
    else:
        click.echo(f"gpuwatch: {line}", err=True)
    if hung:
        _exit_now(EXIT_UNKNOWN)
    sys.exit(EXIT_UNKNOWN)


def _exit_now(code: int) -> NoReturn:
    """Exit at once: a reading thread may be blocked in a driver call, and the interpreter's
    shutdown would wait on what it holds (the simulated host's servers, their workers)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fetch(daemon: client.Daemon, timeout_s: float, progress: _Progress, say_why: bool) -> dict[str, Any] | None:
    """The daemon's ``/status`` document, or None to sample NVML directly.

    A daemon that answers with an HTTP error (401 from a secured endpoint, say) is always
    reported on stderr, since the direct sample that follows is not what the daemon sees; a
    daemon that is not there is reported only when ``--url`` (or a TLS or auth option) was given.
    (An answer that is not a status document is raised: something else listens there.)
    """
    progress.doing = f"waiting for {daemon.status_url}"
    try:
        return daemon.fetch(timeout_s)
    except client.Refused as exc:
        hint = " (to log in: --user, with --password-file or --password-env)" if exc.code == 401 else ""
        click.echo(f"gpuwatch: {exc}; sampling NVML directly{hint}", err=True)
    except client.Unreachable as exc:
        if say_why:
            click.echo(f"gpuwatch: {exc}; sampling NVML directly", err=True)
    return None


def _sample_directly(
    simulate: str | None,
    sim_at_s: float,
    health: HealthThresholds,
    progress: _Progress,
    cost: CostSettings | None = None,
) -> dict[str, Any]:
    """One snapshot sampled in this process.

    On real GPUs that is a single poll (verdicts see one instant). On a simulated host the
    health window before ``sim_at_s`` is replayed poll by poll, as a daemon would have seen it.
    """
    from gpuwatch.runtime import RuntimeOptions, assemble, open_host

    what = "NVML" if simulate is None else f"the simulated host {simulate!r}"
    progress.doing = f"sampling {what} in this process (nvmlInit or a GPU read has not returned)"
    clock = ManualClock()
    # A simulated host's own kernel log is read as a daemon reads it (its Xid 79 counts); a real
    # host's is left to the daemon, which has the privileges and the history.
    options = RuntimeOptions(
        simulate=simulate,
        health=health,
        cost=cost or CostSettings(),
        xid_log="off" if simulate is None else "auto",
    )
    try:
        host = open_host(options, clock)
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    with assemble(options, host=host) as rt:
        rt.start(threads=False)
        snapshot = rt.step()
        if simulate is not None:
            # Two polls more than the window, so the token sources' window is complete too.
            interval = rt.sampler.poll_interval_s
            clock.advance(max(0.0, sim_at_s - health.window_seconds - 2 * interval))
            while clock.sim_seconds() < sim_at_s:
                clock.advance(min(interval, sim_at_s - clock.sim_seconds()))
                progress.doing = f"sampling {what} in this process (a GPU read at simulated {clock.sim_seconds():g} s has not returned)"
                rt.step()
                rt.scrape_tokens()
            snapshot = rt.step()  # one last poll takes in the last scrape
        return to_document(snapshot, age_s=0.0)


# -- capture --------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write the JSON here (default: stdout)."
)
@click.option(
    "--no-mask",
    is_flag=True,
    help="Keep serial numbers, UUIDs and process names (masked by default; a simulated host's are never masked).",
)
@_simulate_option("Capture a simulated host instead of the real driver (after its first simulated minute).")
def capture(output: str | None, no_mask: bool, simulate: str | None) -> None:
    """Record what NVML answers here, for every query gpuwatch makes, as JSON.

    Driver, NVML and CUDA versions; for each GPU every entry point and field id gpuwatch reads,
    with NVML's return code and one sample of the value. Attach it to a bug report, or replay it
    as a simulated host with `gpuwatch serve --simulate FILE.json`.
    """
    from gpuwatch.nvml import capture as recorder
    from gpuwatch.runtime import RuntimeOptions, open_host

    clock = ManualClock()
    try:
        host = open_host(RuntimeOptions(simulate=simulate), clock)
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    clock.advance(CAPTURE_SIMULATED_AT_S)
    try:
        # A simulated host's identities are made up: kept, so that a replay shows the same series.
        doc = recorder.capture(mask=not no_mask and simulate is None)
    except recorder.NvmlError as exc:
        click.echo(f"gpuwatch: cannot capture: NVML answered {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    finally:
        if host.library is not None:
            from gpuwatch.nvml import use_library

            host.library.close()
            use_library(None)
    text = json.dumps(doc, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        click.echo(f"gpuwatch: cannot write the capture to {output}: {exc.strerror}; choose another --output", err=True)
        sys.exit(1)
    click.echo(f"gpuwatch: {len(doc['gpus'])} GPU(s) captured to {output}", err=True)


# -- sim-run --------------------------------------------------------------------------------------


@main.command("sim-run", context_settings={"ignore_unknown_options": True})
@click.argument("scenario")
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--sim-speed",
    "sim_speed",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Simulated seconds per wall-clock second; 0 holds time still at --sim-at.",
)
@click.option(
    "--sim-at",
    "sim_at_s",
    type=_Duration(),
    default=None,
    help="The simulated time the program starts at (e.g. 5m: GPUs warmed up, throttling begun); "
    "default: the scenario's start.",
)
def sim_run(scenario: str, program: tuple[str, ...], sim_speed: float, sim_at_s: float | None) -> None:
    """Run a Python NVML program in this process, over a simulated host's driver.

    SCENARIO is a built-in scenario name or a TOML path. PROGRAM is a console script on PATH
    (gpustat, nvitop, your own), a Python script path, or -m MODULE; put -- before it so its own
    options pass through. It runs unmodified: the simulated driver library sits beneath pynvml,
    so every NVML call it makes answers from simulated GPUs whose time keeps running. Exits with
    the program's exit status (127: not found, 126: not a Python program).

    \b
    Examples:
      gpuwatch sim-run inference-host -- gpustat --json
      gpuwatch sim-run mixed-fleet --sim-at 5m -- nvitop --once
      gpuwatch sim-run inference-host -- -m my_tool --verbose
    """
    from gpuwatch import simrun

    try:
        code = simrun.run(scenario, program, speed=sim_speed, start_s=sim_at_s or 0.0)
    except simrun.ProgramError as exc:
        click.echo(f"gpuwatch: {exc}", err=True)
        sys.exit(exc.exit_code)
    except scenarios.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    sys.exit(code)


# -- tune (gpuwatch/tune_command.py) --------------------------------------------------------------

from gpuwatch.tune_command import tune  # noqa: E402

main.add_command(tune)
