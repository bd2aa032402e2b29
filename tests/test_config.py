"""Config file and flags: merge order, and errors that name file, key and value."""

from __future__ import annotations

import pytest

from gpuwatch import config
from gpuwatch.analysis.health import HealthThresholds


def write(tmp_path, text: str):
    path = tmp_path / "gpuwatch.toml"
    path.write_text(text)
    return path


def test_every_key_is_read_and_flags_win(tmp_path):
    path = write(
        tmp_path,
        'poll_interval = "500ms"\nprocess_interval = "1m"\n[web]\nlisten_address = "127.0.0.1:9000"\n'
        '[simulate]\nscenario = "xid-79"\nspeed = 30\n[log]\nlevel = "DEBUG"\n',
    )
    settings = config.build(config.load_file(path), {"poll_interval_s": 2.0})
    assert settings == config.ServeSettings(
        listen_address="127.0.0.1:9000",
        poll_interval_s=2.0,
        process_interval_s=60.0,
        simulate="xid-79",
        sim_speed=30.0,
        log_level="debug",
        health=HealthThresholds(),
    )


def test_every_flag_has_a_file_key():
    assert set(config.FLAG_FOR_KEY) == {k for k in config._KEYS if not k.startswith("health.")}


def test_health_thresholds_come_from_the_file(tmp_path):
    path = write(tmp_path, '[health]\nwindow = "2m"\nsustained_ratio = 0.25\ncritical_xids = [79]\n')
    health = config.build(config.load_file(path), {}).health
    assert (health.window_seconds, health.sustained_ratio, health.critical_xids) == (120.0, 0.25, (79,))
    assert health.warning_xids == (63,)  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('poll_interval = "fast"', ["poll_interval", "'fast'", "duration"]),
        ("poll_interval = 0", ["poll_interval", "0", "greater than zero"]),
        ('[web]\nlisten_address = "localhost"', ["web.listen_address", "'localhost'", "host:port"]),
        ('[web]\nlisten_adress = ":9961"', ["unknown key", "web.listen_adress"]),
        ('[log]\nlevel = "loud"', ["log.level", "'loud'", "debug, info"]),
        ("[simulate]\nspeed = -1", ["simulate.speed", "-1"]),
        ("poll_interval = ", ["not valid TOML"]),
        ("[health]\nsustained_ratio = 1.5", ["health.sustained_ratio", "1.5", "fraction"]),
        ('[health]\ncritical_xids = ["79"]', ["health.critical_xids", "Xid numbers"]),
    ],
)
def test_bad_files_are_refused_with_file_key_and_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as error:
        config.load_file(path)
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_missing_file_says_so(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load_file(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5), ("1m30s", 90.0), ("1h", 3600.0), (3, 3.0)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('poll_interval = "2h"', ["poll_interval", "'2h'", "out of range", "3600"]),
        ("[web]\nmax_requests = 0", ["web.max_requests", "0", "greater than zero"]),
        ("[web]\nmax_requests = 5000", ["web.max_requests", "5000", "out of range"]),
        ("[web]\nmax_requests = 2.5", ["web.max_requests", "2.5", "integer"]),
        ('[web]\nmax_requests = "many"', ["web.max_requests", "'many'", "integer"]),
        ("[web]\nconfig_file = 3", ["web.config_file", "3", "string"]),
        ("[web]\nread_timeout = true", ["web.read_timeout", "True", "duration"]),
        ("[log]\nlevel = 3", ["log.level", "3", "string"]),
    ],
)
def test_types_and_ranges_are_checked(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as error:
        config.load_file(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    for part in expected:
        assert part in str(error.value)


def test_the_web_config_file_is_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, '[web]\nconfig_file = "web.yml"')
    assert config.load_file(path)["web_config_file"] == str(tmp_path / "web.yml")


def test_environment_overrides_the_file_and_flags_override_both(tmp_path):
    path = write(tmp_path, 'poll_interval = "2s"\nprocess_interval = "20s"\n[log]\nlevel = "info"')
    environ = {
        "GPUWATCH_POLL_INTERVAL": "500ms",
        "GPUWATCH_LOG_LEVEL": "debug",
        "GPUWATCH_WEB_MAX_REQUESTS": "8",
        "GPUWATCH_OPTS": "--simulate",  # the unit's extra flags, not a setting
        "HOME": "/root",
    }
    settings = config.load(str(path), {"log_level": "error"}, environ)
    assert settings.poll_interval_s == 0.5  # env over file
    assert settings.process_interval_s == 20.0  # file
    assert settings.max_requests == 8
    assert settings.log_level == "error"  # flag over env


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"GPUWATCH_POLL_INTERVAL": "often"}, ["GPUWATCH_POLL_INTERVAL", "poll_interval", "'often'"]),
        ({"GPUWATCH_POLL_INTEVRAL": "1s"}, ["GPUWATCH_POLL_INTEVRAL", "unknown"]),
    ],
)
def test_bad_environment_names_variable_key_and_value(environ, expected):
    with pytest.raises(config.ConfigError) as error:
        config.load(None, {}, environ)
    for part in expected:
        assert part in str(error.value)


def test_every_key_has_an_environment_variable():
    assert config.env_name("web.listen_address") == "GPUWATCH_WEB_LISTEN_ADDRESS"
    assert len({config.env_name(k) for k in config._KEYS}) == len(config._KEYS)
    assert set(config.FLAG_FOR_KEY) == {k for k in config._KEYS if not k.startswith("health.")}


def test_health_thresholds_from_the_environment():
    env = {"GPUWATCH_HEALTH_CRITICAL_XIDS": "48, 79", "GPUWATCH_HEALTH_SUSTAINED_RATIO": "0.3"}
    health = config.load(None, {}, env).health
    assert (health.critical_xids, health.sustained_ratio) == ((48, 79), 0.3)
    with pytest.raises(config.ConfigError, match="GPUWATCH_HEALTH_CRITICAL_XIDS"):
        config.load(None, {}, {"GPUWATCH_HEALTH_CRITICAL_XIDS": "48,lots"})


def test_flags_are_held_to_the_same_ranges():
    with pytest.raises(
        config.ConfigError, match=r"flag --poll-interval \(key 'poll_interval'\): value 0.001: out of range"
    ):
        config.load(None, {"poll_interval_s": 0.001}, {})
