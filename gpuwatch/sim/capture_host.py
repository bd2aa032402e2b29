"""A simulated host replayed from a `gpuwatch capture` JSON file.

Static values are the capture's exactly: identity (name, UUID, serial, PCI ids and bus id, VBIOS),
driver and CUDA versions, power limits, thermal thresholds as the card answered them (absolute and/or
T.Limit offsets), maximum clocks, memory and BAR1 sizes, PCIe link, ECC mode and what the card does
not answer (fan, memory sensor, row remapping, the power-average field, the serial). The physics
(power demand, heat, HBM behaviour) comes from the closest known profile, as for an ``nvidia-smi -q``
file (:mod:`gpuwatch.sim.smi_host`); the scenario's ``fallbacks`` say what was taken from it.

Workload: GPU 0 serves a simulated vLLM server and the others idle, as for an ``nvidia-smi -q`` host.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gpuwatch.sim import abi
from gpuwatch.sim.profiles import MIB, DeviceProfile, Thresholds
from gpuwatch.sim.scenario import Scenario, ScenarioError
from gpuwatch.sim.smi_host import closest_known, served_gpu_spec, vllm_server

FORMAT = "gpuwatch-capture/1"

# nvmlDeviceArchitecture_t -> the name nvidia-smi prints, for matching a card to a known profile
_ARCHITECTURE_NAMES = {
    abi.ARCH_AMPERE: "ampere",
    abi.ARCH_ADA: "ada lovelace",
    abi.ARCH_HOPPER: "hopper",
    10: "blackwell",
}
_FIELD_MEMORY_TEMP = "82"
_FIELD_POWER_AVERAGE = "185"
_TLIMIT_FIELDS = {"shutdown": "193", "slowdown": "194", "memory_max": "195", "max_operating": "196"}


def looks_like_capture(text: str) -> bool:
    return text.lstrip().startswith("{") and FORMAT in text[:400]


class _Gpu:
    """One GPU of the capture: what each query answered, ``None`` where it did not."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.index: int = doc.get("index", 0)
        self._queries: dict[str, Any] = doc.get("queries") or {}
        self._fields: dict[str, Any] = doc.get("fields") or {}

    def answered(self, query: str) -> bool:
        return (self._queries.get(query) or {}).get("return") == "SUCCESS"

    def value(self, query: str) -> Any:
        answer = self._queries.get(query) or {}
        return answer.get("value") if answer.get("return") == "SUCCESS" else None

    def field(self, field_id: str) -> float | None:
        answer = self._fields.get(field_id) or {}
        return answer.get("value") if answer.get("return") == "SUCCESS" else None

    def field_answered(self, field_id: str) -> bool:
        return (self._fields.get(field_id) or {}).get("return") == "SUCCESS"

    def milliwatts(self, query: str) -> float | None:
        value = self.value(query)
        return None if value is None else value / 1000.0


def build(text: str, source: str = "<gpuwatch capture>") -> Scenario:
    """The simulated host a capture describes; ``source`` names it in errors and fallbacks."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ScenarioError(f"{source}: not a gpuwatch capture (format {FORMAT!r}); make one with `gpuwatch capture`")
    gpus_doc = [g for g in doc.get("gpus") or [] if isinstance(g, dict) and g.get("queries")]
    if not gpus_doc:
        raise ScenarioError(f"{source}: the capture has no GPU that answered")
    system = doc.get("system") or {}
    driver = (system.get("nvmlSystemGetDriverVersion") or {}).get("value")
    cuda = (system.get("nvmlSystemGetCudaDriverVersion_v2") or {}).get("value")
    fallbacks: list[str] = []
    gpus = []
    for gpu_doc in gpus_doc:
        gpu = _Gpu(gpu_doc)
        notes: list[str] = []
        device = _device(gpu, notes)
        uuid = gpu.value("nvmlDeviceGetUUID")
        serial = gpu.value("nvmlDeviceGetSerial") if device.serial else None
        if serial == "masked":
            serial = None
            notes.append("serial: masked in the capture; generated")
        enforced = gpu.milliwatts("nvmlDeviceGetEnforcedPowerLimit")
        bus_id = (gpu.value("nvmlDeviceGetPciInfo") or {}).get("busId")
        gpus.append(
            served_gpu_spec(
                device,
                served=gpu.index == 0,
                power_limit_w=enforced if enforced and enforced != device.power_default_w else None,
                uuid=uuid,
                serial=serial,
                pci_bus_id=bus_id,
            )
        )
        fallbacks += [f"GPU {gpu.index} ({device.name}): {note}" for note in notes]
    if driver is None:
        fallbacks.append("driver version: not in the capture; 550.127.05")
    first = gpus[0].card
    names = sorted({g.card.name for g in gpus})
    return Scenario(
        name=source.rsplit("/", 1)[-1].removesuffix(".json"),
        description=f"{len(gpus)}x {', '.join(names)} replayed from the gpuwatch capture {source}; GPU 0 serving",
        seed=0,
        driver_version=driver or "550.127.05",
        cuda_driver_version=int(cuda) if isinstance(cuda, int) else 12040,
        gpus=tuple(gpus),
        servers=(vllm_server(first.memory_total_mib * MIB),),
        source=source,
        fallbacks=tuple(fallbacks),
    )


def _device(gpu: _Gpu, notes: list[str]) -> DeviceProfile:
    name = gpu.value("nvmlDeviceGetName")
    pci = gpu.value("nvmlDeviceGetPciInfo") or {}
    memory = gpu.value("nvmlDeviceGetMemoryInfo_v2") or gpu.value("nvmlDeviceGetMemoryInfo") or {}
    total_mib = memory.get("total", 0) / MIB or None
    family, same = closest_known(
        name,
        pci.get("pciDeviceId"),
        _ARCHITECTURE_NAMES.get(gpu.value("nvmlDeviceGetArchitecture")),
        "geforce" if gpu.value("nvmlDeviceGetBrand") == abi.BRAND_GEFORCE else None,
        hbm=gpu.field_answered(_FIELD_MEMORY_TEMP),
        memory_mib=total_mib,
    )
    if not same:
        notes.append(f"physics: from the closest known card, {family.name}")

    def pick(what: str, value: Any, default: Any) -> Any:
        if value is None:
            notes.append(f"{what}: not answered in the capture; {default} from {family.name}")
            return default
        return value

    constraints = gpu.value("nvmlDeviceGetPowerManagementLimitConstraints") or [None, None]
    default_w = pick(
        "default power limit", gpu.milliwatts("nvmlDeviceGetPowerManagementDefaultLimit"), family.power_default_w
    )
    scale = default_w / family.power_default_w
    thresholds, absolute, tlimit = _thresholds(gpu, family, notes)
    max_clocks = tuple(
        pick(f"max {label} clock", gpu.value(f"nvmlDeviceGetMaxClockInfo:{label}"), default)
        for label, default in zip(("graphics", "sm", "memory", "video"), family.max_clocks_mhz, strict=True)
    )
    bar1 = gpu.value("nvmlDeviceGetBAR1MemoryInfo") or {}
    ecc_mode = gpu.value("nvmlDeviceGetEccMode")
    reserved = memory.get("reserved")
    return replace(
        family,
        key=f"capture:{gpu.index}",
        name=pick("name", name, family.name),
        pci_device_id=pick("PCI device id", pci.get("pciDeviceId"), family.pci_device_id),
        pci_subsystem_id=pick("PCI subsystem id", pci.get("pciSubSystemId"), family.pci_subsystem_id),
        brand=pick("brand", gpu.value("nvmlDeviceGetBrand"), family.brand),
        architecture=pick("architecture", gpu.value("nvmlDeviceGetArchitecture"), family.architecture),
        vbios_version=pick("VBIOS version", gpu.value("nvmlDeviceGetVbiosVersion"), family.vbios_version),
        power_default_w=default_w,
        power_min_w=constraints[0] / 1000.0 if constraints[0] is not None else family.power_min_w * scale,
        power_max_w=constraints[1] / 1000.0 if constraints[1] is not None else family.power_max_w * scale,
        thresholds=thresholds,
        thresholds_absolute=absolute,
        thresholds_tlimit=tlimit,
        memory_tlimit=gpu.field_answered(_TLIMIT_FIELDS["memory_max"]),
        max_clocks_mhz=(max_clocks[0], max_clocks[1], max_clocks[2], max_clocks[3]),
        memory_total_mib=round(pick("memory total", total_mib, family.memory_total_mib)),
        memory_reserved_mib=round(reserved / MIB) if reserved is not None else family.memory_reserved_mib,
        bar1_total_mib=round(bar1["bar1Total"] / MIB) if "bar1Total" in bar1 else family.bar1_total_mib,
        pcie_max_generation=pick(
            "max PCIe generation", gpu.value("nvmlDeviceGetMaxPcieLinkGeneration"), family.pcie_max_generation
        ),
        pcie_max_width=pick("max PCIe width", gpu.value("nvmlDeviceGetMaxPcieLinkWidth"), family.pcie_max_width),
        ecc=None if ecc_mode is None else bool(ecc_mode[0]),
        row_remapping=gpu.answered("nvmlDeviceGetRemappedRows"),
        memory_temperature=gpu.field_answered(_FIELD_MEMORY_TEMP),
        fan=gpu.answered("nvmlDeviceGetFanSpeed"),
        serial=gpu.answered("nvmlDeviceGetSerial"),
        power_average_field=gpu.field_answered(_FIELD_POWER_AVERAGE),
        nvlink_links=family.nvlink_links if same else 0,
        demand_power_w=family.demand_power_w * scale,
        idle_power_w=family.idle_power_w * scale,
    )


def _thresholds(gpu: _Gpu, family: DeviceProfile, notes: list[str]) -> tuple[Thresholds, bool, bool]:
    """The card's absolute thermal points, and whether it answers them as absolute and/or T.Limit values."""
    absolute = {
        label: gpu.value(f"nvmlDeviceGetTemperatureThreshold:{label}")
        for label in ("shutdown", "slowdown", "max_operating", "memory_max", "target")
    }
    offsets = {label: gpu.field(fid) for label, fid in _TLIMIT_FIELDS.items()}
    answers_absolute = all(absolute[k] is not None for k in ("shutdown", "slowdown", "max_operating"))
    answers_tlimit = offsets["shutdown"] is not None and offsets["slowdown"] is not None
    memory_max = absolute["memory_max"] if absolute["memory_max"] is not None else family.thresholds.memory_max
    if answers_absolute:
        return (
            Thresholds(
                absolute["shutdown"], absolute["slowdown"], absolute["max_operating"], memory_max, absolute["target"]
            ),
            True,
            answers_tlimit,
        )
    if answers_tlimit:
        temperature, margin = gpu.value("nvmlDeviceGetTemperature:gpu"), gpu.value("nvmlDeviceGetMarginTemperature")
        if temperature is not None and margin is not None:
            point = round(temperature + margin)
        else:
            point = family.thresholds.max_operating
            notes.append(f"T.Limit point: no margin in the capture (driver before R570); {point} °C from {family.name}")
        shutdown, slowdown = round(point - offsets["shutdown"]), round(point - offsets["slowdown"])
        return Thresholds(shutdown, slowdown, point, memory_max, absolute["target"]), False, True
    notes.append(f"thermal thresholds: the card answers none; physics throttles at those of {family.name}")
    return replace(family.thresholds, target=absolute["target"]), False, False
