"""The NVML reader over simulated GPUs: units, unsupported values, fallbacks, lost GPUs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from waiting import wait_until

from gpuwatch.nvml import GpuLost, NvmlReader, NvmlSessionLost, NvmlUnavailable, use_library
from gpuwatch.nvml.reader import FIELDS, check_fields
from gpuwatch.sim import abi, scenario
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.sim.scenario import SimProcess


@pytest.fixture
def open_reader():
    readers: list[NvmlReader] = []

    def make(name: str, hidden: tuple[str, ...] = ()) -> tuple[NvmlReader, ManualClock, SimulatedNvmlLibrary]:
        clock = ManualClock()
        library = SimulatedNvmlLibrary(scenario.load(name), clock.sim_seconds, hidden_symbols=hidden)
        use_library(library)
        reader = NvmlReader(clock.time)
        reader.open()
        readers.append(reader)
        return reader, clock, library

    yield make
    for reader in readers:
        reader.close()
    use_library(None)


def test_a6000_identity_in_si_units(open_reader):
    reader, _, _ = open_reader("inference-host")
    gpu = reader.identities[0]
    assert gpu.name == "NVIDIA RTX A6000"
    assert gpu.pci_bus_id == "00000000:1B:00.0"
    assert (gpu.power_limit_min_watts, gpu.power_limit_max_watts, gpu.power_limit_default_watts) == (100, 300, 300)
    assert gpu.temperature_thresholds_celsius == {"shutdown": 98, "slowdown": 95, "max_operating": 93, "target": 84}
    assert gpu.max_clocks_hertz["sm"] == 2100e6 and gpu.max_clocks_hertz["memory"] == 8001e6
    assert gpu.memory_size_bytes == 46068 * 2**20
    assert gpu.ecc_enabled is True
    assert reader.driver_version == "550.127.05" and reader.cuda_driver_version == "12.4"


def test_a6000_reading_under_load(open_reader):
    reader, clock, _ = open_reader("inference-host")
    clock.advance(300)
    r = reader.read(0)
    assert r.power_limit_watts == 300.0
    assert 250 < r.power_watts <= 300 * 1.05
    assert r.energy_joules > 0
    assert r.clock_event_reasons == frozenset({"sw_power_cap"})
    assert 0.9 < r.utilization_ratio["gpu"] <= 1.0
    assert r.clocks_hertz["sm"] < 2100e6
    assert r.ecc_errors[("uncorrected", "volatile")] == 0
    assert r.remapped_rows == {"correctable": 0, "uncorrectable": 0}
    assert r.row_remap_pending is False
    assert r.memory_temperature_celsius is None  # GDDR6: no memory sensor
    assert r.violation_seconds["power"] == pytest.approx(300, abs=1)
    idle = reader.read(3)
    assert idle.clock_event_reasons == frozenset({"idle"})
    assert idle.power_watts < 40


def test_consumer_card_omits_what_it_does_not_support_and_logs_it_once(open_reader, caplog):
    caplog.set_level(logging.INFO, logger="gpuwatch")
    reader, clock, _ = open_reader("consumer-gpu")
    first = reader.read(0)
    logged_after_first_poll = len(caplog.records)
    for _ in range(20):
        clock.advance(1)
        last = reader.read(0)
    assert len(caplog.records) == logged_after_first_poll  # nothing logged per poll
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    gpu = reader.identities[0]
    assert gpu.ecc_enabled is False and gpu.serial is None  # ECC mode Disabled, as the capture shows
    assert gpu.temperature_thresholds_celsius == {"target": 84.0}  # T.Limit card: the acoustic target only
    for reading in (first, last):
        assert reading.ecc_errors == {}
        assert reading.remapped_rows == {"correctable": 0, "uncorrectable": 0} and reading.row_remap_pending is False
        assert reading.temperature_margin_celsius is not None
        assert reading.energy_joules is not None


def test_each_profile_reports_what_its_hardware_has(open_reader):
    reader, clock, _ = open_reader("mixed-fleet")
    clock.advance(60)
    names = [g.name for g in reader.identities]
    readings = {name: reader.read(i) for i, name in enumerate(names)}
    assert readings["NVIDIA A100-SXM4-80GB"].memory_temperature_celsius is not None  # HBM
    assert readings["NVIDIA H100 80GB HBM3"].memory_temperature_celsius is not None
    h200 = readings["NVIDIA H200"]
    assert h200.memory_temperature_celsius is not None and h200.temperature_celsius is not None
    assert h200.memory_temperature_celsius < h200.temperature_celsius  # HBM3e under load: cooler than the die
    assert readings["NVIDIA L40S"].memory_temperature_celsius is None
    assert readings["NVIDIA L40S"].fan_speed_ratio is None  # passive
    assert readings["NVIDIA RTX A6000"].fan_speed_ratio is not None
    l40s = reader.identities[names.index("NVIDIA L40S")]
    assert l40s.temperature_thresholds_celsius == {}  # Ada answers T.Limit offsets and a margin, not thresholds
    assert readings["NVIDIA L40S"].temperature_margin_celsius is not None
    a6000 = reader.identities[names.index("NVIDIA RTX A6000")]
    assert a6000.temperature_thresholds_celsius["max_operating"] == 93.0
    assert readings["NVIDIA RTX A6000"].temperature_margin_celsius is None  # no T.Limit on an A6000
    for name, reading in readings.items():
        assert reading.power_watts <= reading.power_limit_watts * 1.05, name


@pytest.mark.parametrize(
    "hidden",
    [
        ("nvmlDeviceGetCurrentClocksEventReasons",),
        ("nvmlDeviceGetMemoryInfo_v2",),
        ("nvmlDeviceGetTemperatureV",),
        ("nvmlDeviceGetFieldValues",),
        ("nvmlDeviceGetComputeRunningProcesses_v3",),
    ],
)
def test_older_drivers_fall_back_to_older_calls(open_reader, hidden):
    reader, clock, _ = open_reader("inference-host", hidden=hidden)
    clock.advance(120)
    r = reader.read(0)
    assert r.clock_event_reasons == frozenset({"sw_power_cap"})
    assert r.memory_used_bytes is not None and r.temperature_celsius is not None
    assert r.energy_joules is not None and r.power_limit_watts == 300.0
    assert r.ecc_errors[("corrected", "aggregate")] == 0
    assert r.violation_seconds["power"] > 0
    if hidden == ("nvmlDeviceGetMemoryInfo_v2",):
        assert r.memory_reserved_bytes is None  # v1 has no reserved figure
    if hidden == ("nvmlDeviceGetComputeRunningProcesses_v3",):
        assert [p.name for p in reader.processes(2)] == ["python3"]


def test_a_process_is_named_once_while_it_stays_and_again_after_it_left(open_reader):
    reader, _, library = open_reader("inference-host")
    listed = library.gpus[2].processes
    pid = listed[0].pid  # above Linux's largest pid: psutil cannot see it, NVML names it

    def names() -> tuple[list[str | None], int]:
        return [p.name for p in reader.processes(2)], library.calls_by_symbol["nvmlSystemGetProcessName"]

    first, looked_up = names()
    assert names() == (first, looked_up)  # the same process again: not looked up again
    gone = listed.pop(0)
    assert pid not in [p.pid for p in reader.processes(2)]
    listed.insert(0, SimProcess(pid=pid, name="sglang", used_memory_bytes=gone.used_memory_bytes))
    again, looked_up_again = names()
    assert again[0] == "sglang" and looked_up_again == looked_up + 1  # a new process under the old pid


def test_gpu_lost_mid_run_is_reported_and_not_called_again(open_reader):
    reader, clock, library = open_reader("xid-79")
    assert reader.read(1).power_watts > 0
    clock.advance(45)
    with pytest.raises(GpuLost, match="GpuIsLost"):
        reader.read(1)
    calls = library.calls
    with pytest.raises(GpuLost):
        reader.read(1)
    assert library.calls == calls  # a lost GPU costs no further driver calls
    for i in (0, 2, 3):
        assert reader.read(i).power_watts > 0


def test_no_driver_library_is_nvml_unavailable_with_a_hint():
    use_library(None)
    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        assert "LibraryNotFound" in str(exc) and "--simulate" in str(exc)
    else:  # a machine with a real driver
        reader.close()
        pytest.skip("a real NVIDIA driver is present")


def _reader_over(text: str) -> tuple[NvmlReader, ManualClock, SimulatedNvmlLibrary]:
    clock = ManualClock()
    library = SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds)
    use_library(library)
    return NvmlReader(clock.time), clock, library


_RESET = (
    '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
    '[[gpu.fault]]\nkind = "fall_off_bus"\nat_s = 10\n[[gpu.fault]]\nkind = "gpu_reset"\nat_s = 30\n'
)


def test_a_lost_gpu_is_probed_again_on_a_backoff_and_read_again_after_a_reset(caplog):
    reader, clock, library = _reader_over(_RESET)
    reader.open()
    try:
        uuid = reader.identities[0].uuid
        clock.advance(11)
        with pytest.raises(GpuLost):
            reader.read(0)
        probes = []
        for _ in range(18):  # t = 12 .. 29: still lost; probed at 12, 14, 18, 26 (1, 2, 4, 8 s apart)
            clock.advance(1)
            calls = library.calls_by_symbol["nvmlDeviceGetHandleByUUID"]
            with pytest.raises(GpuLost):
                reader.read(0)
            if library.calls_by_symbol["nvmlDeviceGetHandleByUUID"] > calls:
                probes.append(clock.sim_seconds())
        assert probes == [12, 14, 18, 26]
        clock.advance(13)  # reset at 30; the next probe is due at 42
        with caplog.at_level(logging.WARNING):
            reading = reader.read(0)
        assert reading.power_watts > 0 and reader.identities[0].uuid == uuid
        assert "answering again" in caplog.text
    finally:
        reader.close()


def test_a_call_that_answered_once_is_not_written_off_by_a_passing_not_supported():
    text = (
        'driver_version = "570.133.07"\n'  # nvmlDeviceGetTemperatureV (temperature#0) is R570
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n[[gpu.fault]]\nkind = "not_supported"\nat_s = 10\nduration_s = 5\n'
    )
    reader, clock, _ = _reader_over(text)
    reader.open()
    try:
        assert reader.read(0).temperature_celsius is not None
        clock.advance(11)
        during = reader.read(0, slow=False)
        assert during.temperature_celsius is None and during.power_watts is None
        errors = reader.error_counts()
        assert errors[0, "nvmlDeviceGetTemperatureV"] == 1 and errors[0, "nvmlDeviceGetFieldValues"] == 1
        clock.advance(5)
        after = reader.read(0)
        assert after.temperature_celsius is not None and after.power_watts is not None
    finally:
        reader.close()


def test_one_field_failing_in_the_batch_costs_that_value_only(monkeypatch):
    """A field whose own return code fails loses that value for that poll; the batch reads on."""
    reader, clock, library = _reader_over('[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n')
    reader.open()
    try:
        clock.advance(60)
        before = reader.read(0)
        assert before.power_watts is not None and before.violation_seconds["power"] > 0
        table = library._field_table

        def without_average_power(gpu):
            fields = dict(table(gpu))
            _, value_type, value = fields[abi.FI_POWER_AVERAGE]
            fields[abi.FI_POWER_AVERAGE] = (False, value_type, value)  # this entry: NOT_SUPPORTED
            fields[abi.FI_PERF_POLICY_POWER] = (True, abi.VALUE_SIGNED_INT, -5)  # and another value type
            return fields

        monkeypatch.setattr(library, "_field_table", without_average_power)
        clock.advance(1)
        during = reader.read(0)
        assert during.power_watts is None and reader.error_counts() == {(0, "nvmlDeviceGetFieldValues:power_watts"): 1}
        assert during.violation_seconds["power"] == -5e-9  # decoded as the type the entry names
        assert during.energy_joules > before.energy_joules and during.temperature_celsius is not None
        monkeypatch.setattr(library, "_field_table", table)
        clock.advance(1)
        after = reader.read(0)
        assert after.power_watts is not None and after.violation_seconds["power"] >= before.violation_seconds["power"]
        assert reader.error_counts() == {(0, "nvmlDeviceGetFieldValues:power_watts"): 1}
    finally:
        reader.close()


def test_a_driver_reload_is_a_lost_session_not_a_lost_gpu():
    reader, clock, _ = _reader_over(
        '[[fault]]\nkind = "driver_reload"\nat_s = 10\nduration_s = 5\n[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
    )
    reader.open()
    clock.advance(11)
    with pytest.raises(NvmlSessionLost, match="Uninitialized"):
        reader.read(0)
    reader.close()
    with pytest.raises(NvmlUnavailable, match="DriverNotLoaded"):
        reader.open()
    clock.advance(5)
    fresh = NvmlReader(clock.time)
    fresh.open()
    try:
        assert fresh.read(0).power_watts > 0
    finally:
        fresh.close()


def test_each_field_reads_the_same_through_the_batch_as_through_its_direct_call():
    """A driver without nvmlDeviceGetFieldValues reads every field that has a direct call through
    it; at the same instant the two paths agree, unit conversion and label included."""
    text = '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
    readings = []
    for hidden in ((), ("nvmlDeviceGetFieldValues",)):
        clock = ManualClock()
        use_library(SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds, hidden_symbols=hidden))
        reader = NvmlReader(clock.time)
        reader.open()
        try:
            clock.advance(90)
            readings.append(reader.read(0))
        finally:
            reader.close()
            use_library(None)
    batch, direct = readings
    for f in FIELDS:
        if f.direct is None:
            continue
        value = getattr(direct, f.name)
        assert value == getattr(batch, f.name), f.key
        if f.label is not None:
            assert f.label in value, f.key
            assert type(value[f.label]) is type(f.unit(0)), f.key
        else:
            assert value is not None and type(value) is type(f.unit(0)), f.key


def test_a_declaration_that_does_not_fit_the_reading_fails_at_import_time():
    check_fields(FIELDS)
    power = next(f for f in FIELDS if f.name == "power_watts")
    with pytest.raises(TypeError, match="no attribute 'power_mw'"):
        check_fields((replace(power, name="power_mw"),))
    with pytest.raises(TypeError, match="mapping attribute"):
        check_fields((replace(power, label="average"),))
    with pytest.raises(TypeError, match="mapping attribute"):
        check_fields((replace(power, name="ecc_errors"),))
    with pytest.raises(TypeError, match="field id is declared twice"):
        check_fields((power, replace(power, name="power_instant_watts")))


def test_errors_are_counted_by_gpu_and_nvml_function():
    """Every query an error is counted under names an NVML function (a C entry point the driver was
    asked for), and for one of several values, which."""
    text = (
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
        '[[gpu.fault]]\nkind = "not_supported"\nat_s = 10\nduration_s = 200\nratio = 0.3\n'
    )
    reader, clock, library = _reader_over(text)
    reader.open()
    try:
        reader.read(1)
        reader.processes(1)
        for _ in range(100):
            clock.advance(2)
            reader.read(0, slow=False)
            reader.read(1)
            reader.processes(1)
        errors = reader.error_counts()
    finally:
        reader.close()
    assert {gpu for gpu, _ in errors} == {1}
    queries = {query for _, query in errors}
    # an A6000 on R550: no nvmlDeviceGetTemperatureV (R570+), so the classic call
    assert {"nvmlDeviceGetTemperature", "nvmlDeviceGetClockInfo:sm", "nvmlDeviceGetFanSpeed"} <= queries
    assert "nvmlDeviceGetFieldValues" in queries  # the batch call (one entry's failure: the test above)
    for query in queries:
        function, _, what = query.partition(":")
        assert library.calls_by_symbol[function] > 0, query
        if function == "nvmlDeviceGetFieldValues" and what:
            assert what in {f.key for f in FIELDS}, query


def test_a_process_name_that_is_not_utf8_is_escaped_not_dropped(open_reader):
    """NVML copies the kernel's bytes; pynvml decodes them as strict UTF-8 and raises. The listing
    for that GPU keeps every process, the bad name escaped (``\\xNN``)."""
    reader, _, library = open_reader("inference-host")
    listed = library.gpus[2].processes
    listed[0] = replace(listed[0], name=os.fsdecode(b"ev\xff\xfeil"))  # above Linux's pids: NVML names it
    names = [p.name for p in reader.processes(2)]
    assert names[0] == r"ev\xff\xfeil" and len(names) == len(listed)
    assert all(name is not None for name in names)


def test_a_process_is_named_by_its_executable_never_by_its_arguments(tmp_path):
    """A 15-byte comm with an argv[0] that begins with it: psutil's name() would take argv[0]."""
    from gpuwatch.nvml.reader import _name_and_user

    link = tmp_path / "fifteen-bytes-x" / "fifteen-bytes-xx"
    link.parent.mkdir()
    link.symlink_to(os.path.realpath(sys.executable))
    bad = tmp_path / b"ev\xff\xfeil".decode("utf-8", "surrogateescape")
    bad.symlink_to(os.path.realpath(sys.executable))
    code = "import sys;sys.stdin.read()"
    children = [
        subprocess.Popen(["fifteen-bytes-xx --api-key=secret", "-c", code], executable=link, stdin=subprocess.PIPE),
        subprocess.Popen(["anything", "-c", code], executable=bad, stdin=subprocess.PIPE),
    ]
    try:
        ours = Path("/proc/self/comm").read_bytes()  # a child's until its exec names it, after Popen returned
        for child in children:
            assert wait_until(lambda c=child: Path(f"/proc/{c.pid}/comm").read_bytes() != ours)
        assert psutil.Process(children[0].pid).name() == "fifteen-bytes-xx --api-key=secret"  # what we avoid
        assert _name_and_user(children[0].pid) == ("fifteen-bytes-x", psutil.Process().username())
        assert _name_and_user(children[1].pid)[0] == r"ev\xff\xfeil"
    finally:
        for child in children:
            child.communicate(b"")
