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
