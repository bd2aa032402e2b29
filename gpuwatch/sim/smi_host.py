"""A simulated host built from the text of ``nvidia-smi -q``: a model of an operator's own cards.

One simulated GPU per ``GPU`` block (the first block of each bus id, where a file holds an idle and
a load section), with that card's identity (name, serial and UUID unless masked, VBIOS, PCI ids
and bus id), power limits, thermal thresholds as the card answers them (absolute and/or relative
to T.Limit), clocks, memory, PCIe link, idle state and capability set (fan, memory sensor, ECC,
row remapping, NVLink links). The physics (power demand, thermal resistance, HBM behaviour) comes
from the closest known profile, matched by name, PCI device id, then architecture and brand.

What the capture does not say falls back to that profile, and the scenario's ``fallbacks`` say
which, one line each; :func:`gpuwatch.sim.scenario.load` logs them. A value the card printed as
N/A is not a fallback: the simulated card answers NOT_SUPPORTED for it, as the real one does.

Workload: so the host is not all idle, GPU 0 serves a simulated vLLM server (the simulating process
is its process on the GPU, holding 60 % of its memory, at most 40 000 MiB) at a load of 0.9; every
other GPU idles. That is the demo's shape (``inference-host``) on the operator's cards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TypeVar

from gpuwatch.sim import abi, smi
from gpuwatch.sim.profiles import MIB, PROFILES, DeviceProfile, Thresholds
from gpuwatch.sim.scenario import GpuSpec, Scenario, ScenarioError, ServerSpec

# nvmlDeviceArchitecture_t and nvmlBrandType_t by the names nvidia-smi prints.
_ARCHITECTURES = {
    "kepler": 2,
    "maxwell": 3,
    "pascal": 4,
    "volta": 5,
    "turing": 6,
    "ampere": abi.ARCH_AMPERE,
    "ada lovelace": abi.ARCH_ADA,
    "hopper": abi.ARCH_HOPPER,
    "blackwell": 10,
}
_BRANDS = {
    "quadro": 1,
    "tesla": 2,
    "nvs": 3,
    "grid": 4,
    "geforce": abi.BRAND_GEFORCE,
    "titan": 6,
    "quadro rtx": 12,
    "nvidia rtx": abi.BRAND_NVIDIA_RTX,
    "nvidia": abi.BRAND_NVIDIA,
    "geforce rtx": 15,
    "titan rtx": 16,
}
_DEFAULT_DRIVER = "550.127.05"
_SERVED_LOAD = 0.9
_SERVED_MEMORY_SHARE = 0.6
_SERVED_MEMORY_MAX_MIB = 40000

T = TypeVar("T")


def build(text: str, source: str = "<nvidia-smi -q>") -> Scenario:
    """The simulated host of the cards in ``text``; ``source`` names it in errors and fallbacks."""
    capture = smi.parse(text)
    blocks = capture.host()
    if not blocks:
        raise ScenarioError(f"{source}: no 'GPU dddd:bb:dd.f' block of nvidia-smi -q output found")
    fallbacks: list[str] = []
    gpus = []
    uuids: set[str] = set()
    for index, block in enumerate(blocks):
        notes: list[str] = []
        device = _device(block, capture, index, notes)
        uuid = block.uuid if block.uuid and not smi.masked(block.uuid) and block.uuid not in uuids else None
        if uuid is None:
            notes.append("UUID: masked, missing or repeated in the capture; generated")
        uuids.add(uuid or "")
        serial = block.serial if device.serial and not smi.masked(block.serial) else None
        if device.serial and serial is None:
            notes.append("serial: masked in the capture; generated")
        enforced = block.power("enforced")
        limit = enforced if enforced and enforced != device.power_default_w else None
        gpus.append(served_gpu_spec(device, index == 0, limit, uuid, serial, _bus_id(block.bus_id)))
        fallbacks += [f"GPU {index} ({block.bus_id}, {device.name}): {note}" for note in notes]
    if not capture.nvlink_links:
        fallbacks.append("NVLink links: no 'nvidia-smi nvlink -s' listing in the file; each GPU as its card's profile")
    driver = capture.driver_version
    if driver is None:
        fallbacks.append(f"driver version: not in the capture; {_DEFAULT_DRIVER}")
    first = gpus[0].card
    server = vllm_server(first.memory_total_mib * MIB)
    names = sorted({g.card.name for g in gpus})
    return Scenario(
        name=re.sub(r"\.txt$", "", source.rsplit("/", 1)[-1]),
        description=f"{len(gpus)}x {', '.join(names)} from the nvidia-smi -q capture {source}; GPU 0 serving",
        seed=0,
        driver_version=driver or _DEFAULT_DRIVER,
        cuda_driver_version=_cuda_version(capture.cuda_version),
        gpus=tuple(gpus),
        servers=(server,),
        source=source,
        fallbacks=tuple(fallbacks),
    )


def served_gpu_spec(
    device: DeviceProfile,
    served: bool,
    power_limit_w: float | None,
    uuid: str | None,
    serial: str | None,
    pci_bus_id: str | None,
) -> GpuSpec:
    """A captured card in the host: serving (GPU 0) or idle, at its capture's ambient and cooling."""
    return GpuSpec(
        profile=device.key,
        load_steps=((0.0, _SERVED_LOAD if served else 0.0),),
        ambient_celsius=device.ambient_celsius,
        ambient_rise_celsius_per_minute=0.0,
        ambient_max_celsius=device.ambient_celsius,
        thermal_resistance_c_per_w=device.thermal_resistance_c_per_w,
        thermal_time_constant_s=device.thermal_time_constant_s,
        power_limit_w=power_limit_w,
        processes=(),
        faults=(),
        device=device,
        uuid=uuid,
        serial=serial,
        pci_bus_id=pci_bus_id,
    )


def vllm_server(memory_total_bytes: float) -> ServerSpec:
    """The simulated vLLM server on GPU 0 of a captured host, holding 60 % of its memory (at most 40 000 MiB)."""
    return ServerSpec(
        name="vllm",
        kind="vllm",
        model="meta-llama/Llama-3.1-8B-Instruct",
        gpus=(0,),
        port=0,
        decode_tokens_per_s=1400.0,
        prefill_tokens_per_s=2000.0,
        used_memory_bytes=int(min(_SERVED_MEMORY_MAX_MIB * MIB, _SERVED_MEMORY_SHARE * memory_total_bytes))
        // MIB
        * MIB,
    )


def closest_profile(block: smi.SmiGpu) -> tuple[DeviceProfile, bool]:
    """The known profile nearest to this card, and whether it is the same card."""
    return closest_known(
        block.name,
        block.pci_device_id,
        block.architecture,
        block.brand,
        hbm=block.temperature("memory") is not None,
        memory_mib=block.memory_mib("total"),
    )


def closest_known(
    name: str | None,
    pci_device_id: int | None,
    architecture: str | None,
    brand: str | None,
    hbm: bool,
    memory_mib: float | None,
) -> tuple[DeviceProfile, bool]:
    """The known profile nearest to a card (by name, PCI device id, then architecture, brand and
    memory), and whether it is the same card. ``architecture`` and ``brand`` as nvidia-smi names them."""
    for profile in PROFILES.values():
        if name == profile.name or pci_device_id == profile.pci_device_id:
            return profile, True
    arch = (architecture or "").lower()
    upper = (name or "").upper()
    geforce = (brand or "").lower().startswith("geforce") or "GEFORCE" in upper
    if arch in ("hopper", "blackwell") or re.search(r"\b(GH|GB|H|B)\d{3}", upper):
        key = "h200" if (memory_mib or 0) > 100_000 else "h100"
    elif arch == "ada lovelace":
        key = "rtx-4090" if geforce else "l40s"
    elif hbm or re.search(r"\b(A100|A800|A30)\b", upper):
        key = "a100-sxm4-80gb"
    elif geforce:
        key = "rtx-4090"
    else:
        key = "rtx-a6000"
    return PROFILES[key], False


class _Notes:
    """Fallbacks of one GPU: each value the capture lacks is taken from the closest card and noted."""

    def __init__(self, family: DeviceProfile) -> None:
        self.family = family
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)

    def pick(self, what: str, value: T | None, default: T) -> T:
        if value is None:
            self.note(f"{what}: not in the capture; {default} from {self.family.name}")
            return default
        return value

    def answered(self, tree: smi.Node, path: tuple[str, ...], default: bool, answered: bool | None = None) -> bool:
        """Whether the card answers the value at ``path`` (a value, not N/A); the family's where it is missing."""
        if tree.find(*path) is None:
            self.note(f"{path[-1]}: not in the capture; {'answered' if default else 'N/A'} as on {self.family.name}")
            return default
        return tree.text(*path) is not None if answered is None else answered


def _device(block: smi.SmiGpu, capture: smi.SmiCapture, index: int, notes: list[str]) -> DeviceProfile:
    """The card of one block: the capture's values over its closest profile's, noting each fallback."""
    family, same = closest_profile(block)
    n = _Notes(family)
    if not same:
        n.note(f"physics: from the closest known card, {family.name}")
    tree = block.tree
    idle = capture.idle_block(block.bus_id)
    thresholds, absolute, tlimit = _thresholds(block, capture, n)
    power_default = n.pick("default power limit", block.power("default"), family.power_default_w)
    scale = power_default / family.power_default_w
    max_clocks = _four(
        n.pick(f"max {label} clock", value, default)
        for label, value, default in zip(
            ("graphics", "SM", "memory", "video"), block.clocks("Max Clocks"), family.max_clocks_mhz, strict=True
        )
    )
    if idle is not None:
        idle_clocks = _four(
            c if c is not None else d for c, d in zip(idle.clocks(), family.idle_clocks_mhz, strict=True)
        )
        idle_pstate = idle.pstate if idle.pstate is not None else family.idle_pstate
        idle_generation = idle.pcie("generation") or family.idle_pcie_generation
        idle_power = idle.power("draw") or family.idle_power_w * scale
    else:
        n.note(f"idle clocks, P-state, PCIe generation, power: the capture never shows it idle; as {family.name}")
        idle_clocks, idle_pstate = family.idle_clocks_mhz, family.idle_pstate
        idle_generation, idle_power = family.idle_pcie_generation, family.idle_power_w * scale
    memory_sensor = n.answered(tree, ("Temperature", "Memory Current Temp"), family.memory_temperature)
    hbm = family if family.memory_temperature or not memory_sensor else PROFILES["h100"]
    # No `nvidia-smi nvlink -s` listing in the file: the links of the same card, else none.
    links = capture.nvlink_links.get(index, 0) if capture.nvlink_links else family.nvlink_links if same else 0
    if block.mig_enabled:
        n.note("MIG mode: enabled in the capture; simulated as one whole GPU without MIG devices")
    ecc = block.ecc_enabled
    if tree.find("ECC Mode") is None:
        ecc = family.ecc
        n.note(f"ECC mode: not in the capture; {ecc} as on {family.name}")
    average = tree.find(("GPU Power Readings", "Power Readings"), "Average Power Draw")
    device = replace(
        family,
        key=f"capture:{block.bus_id}",
        name=n.pick("name", block.name, family.name),
        pci_device_id=n.pick("PCI device id", block.pci_device_id, family.pci_device_id),
        pci_subsystem_id=n.pick("PCI subsystem id", block.pci_subsystem_id, family.pci_subsystem_id),
        brand=n.pick("brand", _BRANDS.get((block.brand or "").lower()), family.brand),
        architecture=n.pick(
            "architecture", _ARCHITECTURES.get((block.architecture or "").lower()), family.architecture
        ),
        vbios_version=n.pick("VBIOS version", block.vbios_version, family.vbios_version),
        power_default_w=power_default,
        power_min_w=n.pick("min power limit", block.power("min"), family.power_min_w * scale),
        power_max_w=n.pick("max power limit", block.power("max"), family.power_max_w * scale),
        thresholds=thresholds,
        thresholds_absolute=absolute,
        thresholds_tlimit=tlimit,
        memory_tlimit=block.temperature("memory_max_tlimit") is not None,
        max_clocks_mhz=max_clocks,
        idle_clocks_mhz=idle_clocks,
        idle_pstate=idle_pstate,
        idle_pcie_generation=idle_generation,
        memory_total_mib=n.pick("memory total", _int(block.memory_mib("total")), family.memory_total_mib),
        memory_reserved_mib=n.pick("reserved memory", _int(block.memory_mib("reserved")), family.memory_reserved_mib),
        bar1_total_mib=n.pick("BAR1 size", _int(block.memory_mib("bar1")), family.bar1_total_mib),
        pcie_max_generation=n.pick("max PCIe generation", block.pcie("max_generation"), family.pcie_max_generation),
        pcie_max_width=n.pick("max PCIe width", block.pcie("max_width"), family.pcie_max_width),
        ecc=ecc,
        row_remapping=n.answered(tree, ("Remapped Rows",), family.row_remapping, block.row_remapping),
        memory_temperature=memory_sensor,
        fan=n.answered(tree, ("Fan Speed",), family.fan),
        fan_zero_rpm=idle is not None and idle.fan_percent == 0,
        serial=n.answered(tree, ("Serial Number",), family.serial),
        nvlink_links=links,
        # Newer nvidia-smi prints the 1 s average and the instant reading apart; older ones one draw.
        power_average_field=average is not None or family.power_average_field,
        idle_power_w=idle_power,
        demand_power_w=family.demand_power_w * scale,
        memory_temperature_offset_c=hbm.memory_temperature_offset_c,
        memory_temperature_ratio=hbm.memory_temperature_ratio,
    )
    notes += n.lines
    return device


def _thresholds(block: smi.SmiGpu, capture: smi.SmiCapture, n: _Notes) -> tuple[Thresholds, bool, bool]:
    """The card's absolute thermal points, and whether it answers them as absolute and/or T.Limit values."""
    t, family = block.temperature, n.family
    absolute = [t("shutdown"), t("slowdown"), t("max_operating")]
    offsets = [t("shutdown_tlimit"), t("slowdown_tlimit")]
    answers_absolute = all(v is not None for v in absolute)
    answers_tlimit = all(v is not None for v in offsets)
    target = _int(t("target"))
    memory_max = _int(t("memory_max")) or family.thresholds.memory_max
    if block.tree.find("Temperature") is None:
        n.note(f"thermal thresholds: no Temperature section in the capture; those of {family.name}")
        return family.thresholds, family.thresholds_absolute, family.thresholds_tlimit
    if answers_absolute:
        shutdown, slowdown, max_operating = (int(v) for v in absolute if v is not None)
        return Thresholds(shutdown, slowdown, max_operating, memory_max, target), True, answers_tlimit
    if answers_tlimit:
        points = [
            b.temperature("current") + b.temperature("margin")  # type: ignore[operator]
            for b in capture.blocks(block.bus_id)
            if b.temperature("current") is not None and b.temperature("margin") is not None
        ]
        if points:
            point = round(points[0])
        else:
            point = family.thresholds.max_operating
            n.note(f"T.Limit point: no current T.Limit reading in the capture; {point} °C from {family.name}")
        shutdown, slowdown = (round(point - v) for v in offsets if v is not None)
        return Thresholds(shutdown, slowdown, point, memory_max, target), False, True
    # The card answers neither: the real one gives no thresholds at all, and nor does this one. The
    # physics still throttles at the family's points.
    n.note(f"thermal thresholds: the card answers none; physics throttles at those of {family.name}")
    return replace(family.thresholds, target=target), False, False


def _four(values: Iterable[int]) -> tuple[int, int, int, int]:
    graphics, sm, memory, video = values
    return graphics, sm, memory, video


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _bus_id(bus_id: str) -> str:
    """NVML's 8-digit-domain bus id form (older nvidia-smi prints 0000:01:00.0)."""
    domain, rest = bus_id.split(":", 1)
    return f"{int(domain, 16):08X}:{rest.upper()}"


def _cuda_version(text: str | None) -> int:
    """``12.4`` -> 12040, as nvmlSystemGetCudaDriverVersion answers; 12040 where the capture has none."""
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return int(match.group(1)) * 1000 + int(match.group(2)) * 10 if match else 12040
