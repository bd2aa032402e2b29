"""Device profiles: what each simulated card reports and which queries it does not support.

The RTX A6000 values are those of two public ``nvidia-smi -q`` dumps (see
``shared/research/nvml.md`` §6.1). The L40S values come from a public dump of that card; the L40
shares its board family, so its unknown limits follow the L40S (§6.2). A100, H100 and RTX 4090
values are public specification figures and typical readings; treat them as plausible, not as
captures. Power demand and thermal parameters are model inputs, chosen so a card under LLM load
sits at its power cap the way the research describes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpuwatch.sim import abi

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Absolute temperature thresholds in °C (what nvmlDeviceGetTemperatureThreshold reports)."""

    shutdown: int
    slowdown: int
    max_operating: int
    memory_max: int | None = None
    target: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One model of GPU: identity, limits, clocks, memory, what is supported, and model inputs."""

    key: str
    name: str
    pci_device_id: int
    brand: int
    architecture: int
    vbios_version: str
    power_default_w: float
    power_min_w: float
    power_max_w: float
    thresholds: Thresholds
    # Ada and later report limits as offsets from T.Limit; the absolute query is NotSupported there.
    thresholds_absolute: bool
    max_clocks_mhz: tuple[int, int, int, int]  # graphics, sm, memory, video
    idle_clocks_mhz: tuple[int, int, int, int]
    memory_total_mib: int
    memory_reserved_mib: int
    bar1_total_mib: int
    pcie_max_generation: int
    pcie_max_width: int
    ecc: bool | None  # None: the card has no ECC (NotSupported); else whether it is enabled
    row_remapping: bool
    memory_temperature: bool  # HBM parts report a memory sensor
    fan: bool
    serial: bool
    power_average_field: bool  # NVML_FI_DEV_POWER_AVERAGE: Ampere and newer except GA100
    idle_power_w: float
    demand_power_w: float  # board power the workload would draw at max clocks with no cap
    ambient_celsius: float
    thermal_resistance_c_per_w: float
    thermal_time_constant_s: float


_A6000 = DeviceProfile(
    key="rtx-a6000",
    name="NVIDIA RTX A6000",
    pci_device_id=0x223010DE,
    brand=abi.BRAND_NVIDIA_RTX,
    architecture=abi.ARCH_AMPERE,
    vbios_version="94.02.5C.00.02",
    power_default_w=300.0,
    power_min_w=100.0,
    power_max_w=300.0,
    thresholds=Thresholds(shutdown=98, slowdown=95, max_operating=93, target=84),
    thresholds_absolute=True,
    max_clocks_mhz=(2100, 2100, 8001, 1950),
    idle_clocks_mhz=(210, 210, 405, 555),
    memory_total_mib=46068,
    memory_reserved_mib=450,
    bar1_total_mib=65536,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=False,
    fan=True,
    serial=True,
    power_average_field=True,
    idle_power_w=22.0,
    demand_power_w=345.0,
    ambient_celsius=30.0,
    thermal_resistance_c_per_w=0.16,
    thermal_time_constant_s=90.0,
)

_L40S = DeviceProfile(
    key="l40s",
    name="NVIDIA L40S",
    pci_device_id=0x26B910DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_ADA,
    vbios_version="95.02.4B.00.01",
    power_default_w=350.0,
    power_min_w=100.0,
    power_max_w=350.0,
    thresholds=Thresholds(shutdown=92, slowdown=89, max_operating=87),
    thresholds_absolute=False,
    max_clocks_mhz=(2520, 2520, 9001, 1965),
    idle_clocks_mhz=(210, 210, 405, 765),
    memory_total_mib=46068,
    memory_reserved_mib=479,
    bar1_total_mib=65536,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=False,
    fan=False,
    serial=True,
    power_average_field=True,
    idle_power_w=36.0,
    demand_power_w=400.0,
    ambient_celsius=28.0,
    thermal_resistance_c_per_w=0.13,
    thermal_time_constant_s=80.0,
)

_L40 = replace(
    _L40S,
    key="l40",
    name="NVIDIA L40",
    pci_device_id=0x26B510DE,
    vbios_version="95.02.3E.00.02",
    power_default_w=300.0,
    power_max_w=300.0,
    max_clocks_mhz=(2490, 2490, 9001, 1965),
    idle_power_w=35.0,
    demand_power_w=330.0,
    thermal_resistance_c_per_w=0.15,
)

_A100 = DeviceProfile(
    key="a100",
    name="NVIDIA A100 80GB PCIe",
    pci_device_id=0x20B510DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_AMPERE,
    vbios_version="92.00.90.00.04",
    power_default_w=300.0,
    power_min_w=150.0,
    power_max_w=300.0,
    thresholds=Thresholds(shutdown=92, slowdown=89, max_operating=85, memory_max=95),
    thresholds_absolute=True,
    max_clocks_mhz=(1410, 1410, 1512, 1290),
    idle_clocks_mhz=(210, 210, 1512, 795),
    memory_total_mib=81920,
    memory_reserved_mib=567,
    bar1_total_mib=131072,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=True,
    fan=False,
    serial=True,
    power_average_field=False,  # GA100 reports instantaneous power only
    idle_power_w=45.0,
    demand_power_w=320.0,
    ambient_celsius=27.0,
    thermal_resistance_c_per_w=0.15,
    thermal_time_constant_s=70.0,
)

_H100 = DeviceProfile(
    key="h100",
    name="NVIDIA H100 80GB HBM3",
    pci_device_id=0x233010DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_HOPPER,
    vbios_version="96.00.99.00.01",
    power_default_w=700.0,
    power_min_w=200.0,
    power_max_w=700.0,
    thresholds=Thresholds(shutdown=92, slowdown=90, max_operating=87, memory_max=95),
    thresholds_absolute=False,
    max_clocks_mhz=(1980, 1980, 2619, 1755),
    idle_clocks_mhz=(345, 345, 2619, 765),
    memory_total_mib=81559,
    memory_reserved_mib=580,
    bar1_total_mib=131072,
    pcie_max_generation=5,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=True,
    fan=False,
    serial=True,
    power_average_field=True,
    idle_power_w=70.0,
    demand_power_w=730.0,
    ambient_celsius=26.0,
    thermal_resistance_c_per_w=0.07,
    thermal_time_constant_s=60.0,
)

_RTX4090 = DeviceProfile(
    key="rtx-4090",
    name="NVIDIA GeForce RTX 4090",
    pci_device_id=0x268410DE,
    brand=abi.BRAND_GEFORCE,
    architecture=abi.ARCH_ADA,
    vbios_version="95.02.18.80.5F",
    power_default_w=450.0,
    power_min_w=150.0,
    power_max_w=600.0,
    thresholds=Thresholds(shutdown=92, slowdown=90, max_operating=88),
    thresholds_absolute=False,
    max_clocks_mhz=(3105, 3105, 10501, 2415),
    idle_clocks_mhz=(210, 210, 405, 1185),
    memory_total_mib=24564,
    memory_reserved_mib=306,
    bar1_total_mib=256,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=None,
    row_remapping=False,
    memory_temperature=False,
    fan=True,
    serial=False,
    power_average_field=True,
    idle_power_w=25.0,
    demand_power_w=470.0,
    ambient_celsius=28.0,
    thermal_resistance_c_per_w=0.09,
    thermal_time_constant_s=100.0,
)

PROFILES: dict[str, DeviceProfile] = {p.key: p for p in (_A6000, _L40, _L40S, _A100, _H100, _RTX4090)}
