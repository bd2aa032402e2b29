"""The live page without a browser: the ring buffer, the tuner result check, the routes and headers,
and `curl /` on a running daemon naming no other host (tests/test_page_browser.py drives Chromium)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from serving import get_from, serve

from gpuwatch.cli import main
from gpuwatch.model import GpuIdentity, GpuReading, GpuStatus, Snapshot
from gpuwatch.page import tuner
from gpuwatch.page.history import MAX_POINTS, History, capacity_for
from gpuwatch.page.routes import ASSETS, CONTENT_SECURITY_POLICY, asset, page_routes
from gpuwatch.records import Verdict

TUNER = Path(__file__).parent / "data" / "tuner" / "power-limit.json"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name in SVG markup and createElementNS, never fetched


def snapshot(timestamp: float, temperatures: dict[int, float | None]) -> Snapshot:
    gpus = []
    for index, temperature in temperatures.items():
        identity = GpuIdentity(index=index, uuid=f"GPU-{index}", name="test", pci_bus_id=f"0000:0{index}:00.0")
        if temperature is None:
            gpus.append(GpuStatus(identity, up=False, error="GPU is lost", verdict=Verdict("critical", ("lost",), {})))
            continue
        reading = GpuReading(
            timestamp,
            temperature_celsius=temperature,
            power_watts=200.5,
            clocks_hertz={"sm": 1.5e9},
            clock_event_reasons=frozenset({"sw_power_cap", "sw_thermal"}),
        )
        gpus.append(GpuStatus(identity, up=True, reading=reading, verdict=Verdict("ok", (), {})))
    return Snapshot(timestamp=timestamp, nvml_up=True, gpus=tuple(gpus))


# -- the ring buffer ------------------------------------------------------------------------------


def test_history_mirrors_the_snapshots_of_a_simulated_host(sim) -> None:
    run = sim("inference-host")
    snapshots = [run.at(t) for t in range(0, 31)]
    got = run.runtime.history.since()
    assert got["timestamps"] == [s.timestamp for s in snapshots]
    for status in snapshots[-1].gpus:
        columns = got["gpus"][str(status.identity.index)]
        r = status.reading
        assert columns["temperature_celsius"][-1] == r.temperature_celsius
        assert math.isclose(columns["power_watts"][-1], r.power_watts, rel_tol=1e-6)  # kept as 4-byte floats
        assert math.isclose(columns["power_limit_watts"][-1], r.power_limit_watts, rel_tol=1e-6)
        assert math.isclose(columns["sm_clock_hertz"][-1], r.clocks_hertz["sm"], rel_tol=1e-6)
        assert columns["clock_event_reasons"][-1] == sorted(
            r.clock_event_reasons, key=got_order(columns["clock_event_reasons"][-1])
        )
        assert columns["verdict"][-1] == status.verdict.state
    newer = run.runtime.history.since(snapshots[-3].timestamp)
    assert newer["timestamps"] == [s.timestamp for s in snapshots[-2:]]


def got_order(names: list[str]):  # the ring's order of reasons, for comparing a set with a list
    return lambda name: names.index(name) if name in names else len(names)


def test_history_is_a_bounded_ring_that_keeps_the_window() -> None:
    history = History(poll_interval_s=1.0, window_s=10.0)
    assert history.capacity == 11
    for t in range(25):
        history.on_snapshot(snapshot(1000.0 + t, {0: 40.0 + t}))
    got = history.since()
    assert got["timestamps"] == [1000.0 + t for t in range(14, 25)]
    assert got["gpus"]["0"]["temperature_celsius"] == [40.0 + t for t in range(14, 25)]
    assert got["gpus"]["0"]["clock_event_reasons"][-1] == ["sw_power_cap", "sw_thermal"]


def test_history_starts_afresh_when_the_clock_steps_back() -> None:
    history = History(poll_interval_s=1.0, window_s=10.0)
    for t in range(5):
        history.on_snapshot(snapshot(5000.0 + t, {0: 40.0}))
    for t in range(3):  # the wall clock stepped back an hour
        history.on_snapshot(snapshot(1400.0 + t, {0: 41.0}))
    assert history.since()["timestamps"] == [1400.0, 1401.0, 1402.0]


def test_history_thins_fast_polls_and_caps_its_size() -> None:
    assert capacity_for(0.01) == MAX_POINTS
    assert capacity_for(1.0) == 901
    history = History(poll_interval_s=0.01, window_s=900.0)
    for n in range(100):
        history.on_snapshot(snapshot(1000.0 + n * 0.1, {0: 50.0}))
    # one point per window / MAX_POINTS = 0.5 s: 100 polls over 10 s keep 20
    assert len(history.since()["timestamps"]) == 20


def test_history_shows_a_lost_gpu_and_a_new_one_as_gaps() -> None:
    history = History(poll_interval_s=1.0)
    history.on_snapshot(snapshot(1.0, {0: 50.0}))
    history.on_snapshot(snapshot(2.0, {0: None, 1: 60.0}))
    history.on_snapshot(snapshot(3.0, {1: 61.0}))
    got = history.since()
    assert got["gpus"]["0"]["temperature_celsius"] == [50.0, None, None]
    assert got["gpus"]["0"]["verdict"] == ["ok", "critical", None]
    assert got["gpus"]["1"]["temperature_celsius"] == [None, 60.0, 61.0]
    json.dumps(got, allow_nan=False)  # NaN never reaches the JSON


# -- the tuner result -----------------------------------------------------------------------------


def test_tuner_result_loads_sorted_and_complete() -> None:
    result = tuner.load(TUNER)
    assert [p["limit_watts"] for p in result["points"]] == [200.0, 225.0, 250.0, 275.0, 300.0]
    assert result["recommended"]["limit_watts"] == 250.0
    assert result["original_limits_watts"] == {"0": 300.0, "1": 300.0}


def _variant(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    doc = json.loads(TUNER.read_text())
    change(doc)
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.pop("points"), ["key 'points' is missing"]),
        (lambda d: d.update(points=[]), ["'points'", "non-empty"]),
        (lambda d: d["points"][1].update(tokens_per_joule="3.0"), ["points[1].tokens_per_joule", '"3.0"']),
        (lambda d: d["points"][0].update(limit_watts=-5), ["points[0].limit_watts", "-5"]),
        (lambda d: d["points"][0].pop("power_watts"), ["points[0].power_watts is missing"]),
        (lambda d: d["points"][0].update(limit_watts=225.0), ["same limit_watts"]),
        (lambda d: d["recommended"].update(limit_watts=260.0), ["recommended.limit_watts", "260", "any of the points"]),
        (lambda d: d.update(gpus=[]), ["'gpus'"]),
        (lambda d: d.update(restored="yes"), ["'restored'", '"yes"']),
        (lambda d: d.update(original_limits_watts={"0": 300.0}), ["original_limits_watts", "GPUs [0, 1]"]),
    ],
)
def test_a_bad_tuner_result_names_file_key_and_value(tmp_path: Path, change, words) -> None:  # type: ignore[no-untyped-def]
    path = _variant(tmp_path, change)
    with pytest.raises(tuner.TunerResultError) as caught:
        tuner.load(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_tuner_result_tolerates_what_it_does_not_draw(tmp_path: Path) -> None:
    def change(d: dict) -> None:
        d["min_throughput_ratio"] = 0.95
        d["source"] = None
        d["original_limits_watts"] = [300.0, 290.0]
        d["points"][0]["tokens_per_joule"] = None
        d["points"][0]["tokens_per_second"] = None
        d["recommended"] = None

    result = tuner.load(_variant(tmp_path, change))
    assert result["original_limits_watts"] == {"0": 300.0, "1": 290.0}
    assert result["recommended"] is None
    assert "min_throughput_ratio" not in result


def test_not_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tune.json"
    path.write_text("250 W: 97.8 % of the tokens\n")  # the tuner's text output, not --json
    with pytest.raises(tuner.TunerResultError, match=r"tune\.json: not valid JSON"):
        tuner.load(path)


def test_serve_starts_without_its_tuner_result_and_says_why(tmp_path: Path) -> None:
    """The file is optional and often named before the tuner first ran: a warning, not exit 78
    (check-config refuses it); the page carries the error until the file is there and good."""
    missing = tmp_path / "tune.json"
    with serve(tmp_path, "--simulate", "--web.tuner-result", str(missing)) as daemon:
        daemon.wait_for_log("tune.json: cannot read it")
        code, body, _ = get_from("127.0.0.1", daemon.port, "/api/page")
        assert code == 200 and "cannot read it" in json.loads(body)["tuner"]["error"]
        shutil.copy(TUNER, missing)
        code, body, _ = get_from("127.0.0.1", daemon.port, "/api/page")
        assert code == 200 and json.loads(body)["tuner"]["result"]["recommended"]["limit_watts"] == 250.0


def test_a_number_json_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tune.json"
    path.write_text('{"gpus": [' + "9" * 5000 + "]}")  # Python's int() refuses over 4300 digits
    with pytest.raises(tuner.TunerResultError, match="not valid JSON"):
        tuner.load(path)


def test_check_config_checks_the_tuner_result(tmp_path: Path) -> None:
    bad = _variant(tmp_path, lambda d: d.update(restored=None))
    config = tmp_path / "gpuwatch.toml"
    config.write_text(f'[web]\ntuner_result = "{bad.name}"\n')  # relative to the config file
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 78
    assert str(bad) in result.output and "'restored'" in result.output
    shutil.copy(TUNER, bad)
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"web.tuner_result = {str(bad)!r}" in result.output


def test_tuner_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tune.json"
    shutil.copy(TUNER, path)
    shown = tuner.TunerFile(path)
    assert shown.current()["result"]["recommended"]["limit_watts"] == 250.0
    path.write_text("{}")
    assert "key 'gpus' is missing" in shown.current()["error"]
    path.unlink()
    assert "cannot read it" in shown.current()["error"]


# -- routes ---------------------------------------------------------------------------------------


def _routes(tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    history = History(poll_interval_s=1.0)
    for t in range(5):
        history.on_snapshot(snapshot(100.0 + t, {0: 50.0 + t}))
    return page_routes(lambda: {"timestamp": 104.0, "verdict": "ok"}, history, TUNER if tmp_path is None else None)


def test_api_page_serves_status_history_and_tuner() -> None:
    response = _routes()["/api/page"]("")
    doc = json.loads(response.body)
    assert doc["status"] == {"timestamp": 104.0, "verdict": "ok"}
    assert doc["history"]["timestamps"] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert doc["tuner"]["result"]["recommended"]["limit_watts"] == 250.0
    assert response.headers["Cache-Control"] == "no-store"
    later = json.loads(_routes()["/api/page"]("since=102.0").body)
    assert later["history"]["timestamps"] == [103.0, 104.0]
    assert "tuner" not in later  # sent on a full load only


@pytest.mark.parametrize("query", ["since=abc", "since=nan", "since=inf"])
def test_api_page_refuses_a_bad_since(query: str) -> None:
    response = _routes()["/api/page"](query)
    assert response.code == 400


def test_every_page_response_carries_the_security_headers() -> None:
    routes = _routes()
    for path in [*ASSETS, "/api/page"]:
        headers = routes[path]("").headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY


def test_the_page_has_no_inline_script_or_style_and_names_no_other_host() -> None:
    html = asset("index.html").decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert "<style" not in html and " style=" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    for name, _ in ASSETS.values():
        text = asset(name).decode().replace(SVG_NAMESPACE, "")
        assert "http://" not in text and "https://" not in text, name
        assert "@import" not in text and "url(" not in text, name


# -- the daemon -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_curl_slash_on_a_simulated_daemon_loads_only_from_gpuwatch(tmp_path: Path) -> None:
    with serve(tmp_path, "--simulate", "inference-host", "--web.tuner-result", str(TUNER)) as daemon:
        code, body, headers = get_from("127.0.0.1", daemon.port, "/")
        assert code == 200 and headers["content-type"].startswith("text/html")
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        html = body.decode()
        assert "http://" not in html and "https://" not in html
        references = re.findall(r"""(?:src|href)="([^"]*)\"""", html)
        assert set(references) >= {"/page.js", "/page.css", "/metrics", "/status"}
        for reference in references:
            assert reference.startswith("/") and not reference.startswith("//"), reference
            code, content, _ = get_from("127.0.0.1", daemon.port, reference)
            assert code == 200, reference
            if reference in ("/page.js", "/page.css"):
                assert b"http://" not in content.replace(SVG_NAMESPACE.encode(), b"")
                assert b"https://" not in content
        code, body, _ = get_from("127.0.0.1", daemon.port, "/api/page")
        doc = json.loads(body)
        assert len(doc["status"]["gpus"]) == 4 and doc["tuner"]["result"]["gpus"] == [0, 1]
