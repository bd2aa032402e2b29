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
    assert set(config.FLAG_FOR_KEY) == {k for k in config._KEYS if not k.startswith(("health.", "cost."))}


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
    assert set(config.FLAG_FOR_KEY) == {k for k in config._KEYS if not k.startswith(("health.", "cost."))}


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


TOKENS = """
tokens_window = "2m"
[[tokens]]
url = "http://127.0.0.1:8000/metrics"
preset = "vllm"
labels = { model_name = "llama" }
gpus = [1, 0]
timeout = "500ms"
[[tokens]]
url = "http://127.0.0.1:9000/metrics"
generation_metric = "my_generated_total"
[[tokens]]
url = "http://127.0.0.1:8080/metrics"
"""


def test_token_sources_from_the_file(tmp_path):
    settings = config.build(config.load_file(write(tmp_path, TOKENS)), {})
    vllm, custom, auto = settings.tokens
    assert settings.tokens_window_s == 120.0
    assert (vllm.name, vllm.preset, vllm.gpus, vllm.timeout_s) == ("vllm", "vllm", (0, 1), 0.5)
    assert vllm.labels == {"model_name": "llama"} and vllm.metrics is not None
    assert (custom.name, custom.preset, custom.metrics.generation, custom.metrics.prompt) == (  # type: ignore[union-attr]
        "127.0.0.1:9000",
        "custom",
        "my_generated_total",
        None,
    )
    assert (auto.name, auto.preset, auto.metrics, auto.gpus) == ("127.0.0.1:8080", "auto", None, None)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('preset = "vllm"', "[[tokens]] table 1: key 'url': required"),
        ('url = "localhost:8000"', "[[tokens]] table 1: key 'url': value 'localhost:8000': expected a URL"),
        ('url = "http://h/metrics"\npreset = "mlc-llm"', "key 'preset': 'mlc-llm' is not a preset (known: vllm,"),
        ('url = "http://h/metrics"\ngpus = [0, 0]', "key 'gpus': value [0, 0]: a GPU is listed twice"),
        ('url = "http://h/metrics"\ngpus = "all"', "key 'gpus': value 'all': expected \"auto\" or a list"),
        ('url = "http://h/metrics"\ntimeout = "2h"', "key 'timeout': value '2h': out of range"),
        ('url = "http://h/metrics"\nmodel = "x"', "key 'model': unknown key (known: url, name,"),
        (
            'url = "http://h/metrics"\npreset = "vllm"\ngeneration_metric = "x"',
            "key 'preset': give either a preset or generation_metric/prompt_metric",
        ),
        ('url = "http://h/metrics"\nlabels = { engine = 0 }', "key 'labels': value {'engine': 0}: expected a table"),
    ],
)
def test_bad_token_tables_name_the_table_and_key(tmp_path, table, expected):
    path = write(tmp_path, f"[[tokens]]\n{table}\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load_file(path)
    assert str(caught.value).startswith(f"config file {path}: key 'tokens': ")
    assert expected in str(caught.value)


def test_two_sources_with_one_name_are_refused(tmp_path):
    text = '[[tokens]]\nurl = "http://a:1/metrics"\npreset = "vllm"\n[[tokens]]\nurl = "http://b:1/metrics"\npreset = "vllm"\n'
    with pytest.raises(config.ConfigError, match="two token sources are named 'vllm'; give each a distinct name"):
        config.load_file(write(tmp_path, text))


def test_token_sources_from_the_environment():
    values = config.load_env({"GPUWATCH_TOKENS": "http://127.0.0.1:8000/metrics, http://127.0.0.1:8001/metrics"})
    assert [s.name for s in values["tokens"]] == ["127.0.0.1:8000", "127.0.0.1:8001"]


def test_a_short_token_window_is_refused(tmp_path):
    with pytest.raises(config.ConfigError, match="key 'tokens_window': value '5s': out of range: must be between 10 s"):
        config.load_file(write(tmp_path, 'tokens_window = "5s"\n'))


def test_the_example_in_the_config_docstring_is_what_the_loader_accepts(tmp_path):
    import textwrap

    from gpuwatch import config as config_module

    doc = config_module.__doc__ or ""
    example = textwrap.dedent("\n".join(line for line in doc.splitlines() if line.startswith("    ")))
    path = tmp_path / "gpuwatch.toml"
    path.write_text(example)
    settings = config_module.load(str(path), {}, {})
    assert settings.tokens_window_s == 60 and settings.simulate == "inference-host"
    assert settings.tokens[0].url == "http://127.0.0.1:8000/metrics"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'poll_interval = "1s"\n# caf\xe9\n', "not UTF-8: byte 0xe9 at line 2, column 6"),
        (b'\xef\xbb\xbfpoll_interval = "1s"\n', "byte order mark"),
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 32 deep"),
        (b"x = " + b"{a=" * 5000 + b"1" + b"}" * 5000 + b"\n", "nested more than 32 deep"),
        (b"[" + b".".join([b"a"] * 2000) + b"]\n", "unknown key 'a.a.a"),  # as deep as the deepest key, and one more
        (b'[[tokens]]\nurl = "http://127.0.0.1:1/metrics"\npreset = [1]\n', "key 'tokens'"),
        (b"#" * (config.MAX_FILE_BYTES + 1), "larger than 1024 KiB"),
    ],
    ids=["latin-1", "bom", "deep-arrays", "deep-inline-tables", "deep-tables", "wrong-type", "huge"],
)
def test_a_file_that_cannot_be_used_is_one_config_error(tmp_path, content, expected):
    path = tmp_path / "gpuwatch.toml"
    path.write_bytes(content)
    with pytest.raises(config.ConfigError) as error:
        config.load_file(path)
    assert expected in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_fifo_or_device_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opened for reading in blocking mode, this would wait for a writer forever
    with pytest.raises(config.ConfigError, match="not a regular file \\(a FIFO\\)"):
        config.load_file(fifo)
    with pytest.raises(config.ConfigError, match="not a regular file \\(a character device\\)"):
        config.load_file("/dev/zero")
    with pytest.raises(config.ConfigError, match="not a regular file \\(a directory\\)"):
        config.load_file(tmp_path)


def test_an_unknown_variable_is_refused_only_as_a_close_misspelling():
    environ = {"GPUWATCH_TEST_CACHE": "/tmp/x", "GPUWATCH_FOO": "1", "GPUWATCH_OPTS": "", "GW_TEST_CACHE": "/tmp"}
    assert config.load_env(environ) == {}
    assert config.ignored_env(environ) == ["GPUWATCH_FOO", "GPUWATCH_TEST_CACHE"]
    with pytest.raises(config.ConfigError, match="did you mean GPUWATCH_LOG_LEVEL\\?"):
        config.load_env({"GPUWATCH_LOGLEVEL": "debug"})
    assert config.ignored_env({"GPUWATCH_LOGLEVEL": "debug"}) == []  # refused, not ignored


def test_a_setting_that_is_not_utf8_is_refused():
    value = b"127.0.0.1:99\xff".decode("utf-8", "surrogateescape")  # as os.environ holds it
    with pytest.raises(
        config.ConfigError, match=r"GPUWATCH_WEB_LISTEN_ADDRESS: value '127.0.0.1:99\\\\xff' is not UTF-8"
    ):
        config.load_env({"GPUWATCH_WEB_LISTEN_ADDRESS": value})
