"""Device profiles: what each simulated card reports and which queries it does not support.

Every profile is a card of which a real ``nvidia-smi -q`` capture is kept in
``tests/data/captures/`` (provenance in the README there), and ``tests/test_profiles.py`` checks
each profile against its capture: limits, thresholds as the card answers them, clocks, memory,
PCIe, idle state, what is N/A. Where a capture cannot say (the L40S was never idle in its capture;
the A100 capture has no NVLink listing), the value is marked as such below. Power demand and
thermal parameters are model inputs, chosen so a card under LLM load sits at its power cap the way
the research describes.

Thresholds: every card has absolute thermal points (the physics throttles at them), but cards answer
them in one of two ways (``shared/research/real-cards.md``): Ampere as absolute °C
(``nvmlDeviceGetTemperatureThreshold``), Ada and Hopper as offsets from the T.Limit point (field ids
193-196, negative above the point: an H100 says shutdown -8, slowdown -2, max operating 0) and the
current distance to it (``nvmlDeviceGetMarginTemperature``, R570+). For T.Limit cards the
``max_operating`` point below is the T.Limit point read off the capture (current temperature plus
the T.Limit reading).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpuwatch.sim import abi

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The card's thermal points in absolute °C; what the physics throttles at."""

    shutdown: int
    slowdown: int
    max_operating: int  # the T.Limit point on cards that report T.Limit
    memory_max: int | None = None
    target: int | None = None  # the acoustic target (nvidia-smi "GPU Target Temperature"), where answered


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One model of GPU: identity, limits, clocks, memory, what is supported, and model inputs."""

    key: str
    name: str
    pci_device_id: int
    pci_subsystem_id: int
    brand: int
    architecture: int
    vbios_version: str
    power_default_w: float
    power_min_w: float
    power_max_w: float
    thresholds: Thresholds
    # Whether nvmlDeviceGetTemperatureThreshold answers shutdown, slowdown, max operating and memory max.
    thresholds_absolute: bool
    # Whether the T.Limit field ids 193, 194, 196 (and the margin query) answer.
    thresholds_tlimit: bool
    memory_tlimit: bool  # field 195 (memory max operating, relative to T.Limit) answers 0: Hopper
    max_clocks_mhz: tuple[int, int, int, int]  # graphics, sm, memory, video
    idle_clocks_mhz: tuple[int, int, int, int]
    idle_pstate: int
    idle_pcie_generation: int
    memory_total_mib: int
    memory_reserved_mib: int
    bar1_total_mib: int
    pcie_max_generation: int
    pcie_max_width: int
    ecc: bool | None  # None: the card has no ECC (NotSupported); else whether it is enabled
    row_remapping: bool
    memory_temperature: bool  # HBM parts report a memory sensor
    fan: bool
    fan_zero_rpm: bool  # the fan stops while the card is cool (GeForce): 0 % at idle
    serial: bool
    nvlink_links: int
    power_average_field: bool  # NVML_FI_DEV_POWER_AVERAGE: Ampere and newer except GA100
    idle_power_w: float
    demand_power_w: float  # board power the workload would draw at max clocks with no cap
    ambient_celsius: float
    thermal_resistance_c_per_w: float
    thermal_time_constant_s: float
    # HBM: memory temperature = ambient + offset + ratio x (die - ambient). Warmer than the die at
    # idle, cooler under load (H200 capture: 32 vs 28 idle, 41 vs 52 at 628 W).
    memory_temperature_offset_c: float = 0.0
    memory_temperature_ratio: float = 1.0


# 9x RTX A6000, driver 550.127.05 (rtx-a6000__550.127.05.txt): absolute thresholds, no T.Limit;
# idle at P8 with the graphics clock at 0 MHz and the link at Gen1; blower fan at 30 %.
_A6000 = DeviceProfile(
    key="rtx-a6000",
    name="NVIDIA RTX A6000",
    pci_device_id=0x223010DE,
    pci_subsystem_id=0x145910DE,
    brand=abi.BRAND_NVIDIA_RTX,
    architecture=abi.ARCH_AMPERE,
    vbios_version="94.02.5C.00.02",
    power_default_w=300.0,
    power_min_w=100.0,
    power_max_w=300.0,
    thresholds=Thresholds(shutdown=98, slowdown=95, max_operating=93, target=84),
    thresholds_absolute=True,
    thresholds_tlimit=False,
    memory_tlimit=False,
    max_clocks_mhz=(2100, 2100, 8001, 1950),
    idle_clocks_mhz=(0, 0, 405, 555),
    idle_pstate=8,
    idle_pcie_generation=1,
    memory_total_mib=46068,
    memory_reserved_mib=450,
    bar1_total_mib=65536,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=False,
    fan=True,
    fan_zero_rpm=False,
    serial=True,
    nvlink_links=0,
    power_average_field=True,
    idle_power_w=22.0,
    demand_power_w=345.0,
    ambient_celsius=30.0,
    thermal_resistance_c_per_w=0.16,
    thermal_time_constant_s=90.0,
)

# L40S, driver 595.80 (l40s__595.80.txt): T.Limit -5/-2/0 with the point at 88 °C (64 + 24 and
# 54 + 34 in its two sections), no memory T.Limit, passive. Reserved memory is driver-dependent
# (479 MiB at 550, 609 at 595). The capture never shows it idle (an encode load ran throughout), so
# its idle clocks and state are the Ada pattern of the RTX 4090 capture, not a reading.
_L40S = DeviceProfile(
    key="l40s",
    name="NVIDIA L40S",
    pci_device_id=0x26B910DE,
    pci_subsystem_id=0x185110DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_ADA,
    vbios_version="95.02.66.00.02",
    power_default_w=350.0,
    power_min_w=100.0,
    power_max_w=350.0,
    thresholds=Thresholds(shutdown=93, slowdown=90, max_operating=88),
    thresholds_absolute=False,
    thresholds_tlimit=True,
    memory_tlimit=False,
    max_clocks_mhz=(2520, 2520, 9001, 1965),
    idle_clocks_mhz=(210, 210, 405, 765),
    idle_pstate=8,
    idle_pcie_generation=1,
    memory_total_mib=46068,
    memory_reserved_mib=609,
    bar1_total_mib=65536,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=False,
    fan=False,
    fan_zero_rpm=False,
    serial=True,
    nvlink_links=0,
    power_average_field=True,
    idle_power_w=36.0,
    demand_power_w=400.0,
    ambient_celsius=28.0,
    thermal_resistance_c_per_w=0.13,
    thermal_time_constant_s=80.0,
)

# 4x A100-SXM4-80GB, driver 555.42.02 (a100-sxm4-80gb__555.42.02.txt): 500 W boards (400 W ones
# exist), absolute thresholds with a memory max, no T.Limit; idles at P0 with the SM clock at
# 210 MHz, the memory clock at max and the link at Gen4. HBM2e runs warmer than the die at idle
# (43 vs 25 °C). The capture has no NVLink listing; an SXM4 board has 12 links.
_A100_SXM4_80GB = DeviceProfile(
    key="a100-sxm4-80gb",
    name="NVIDIA A100-SXM4-80GB",
    pci_device_id=0x20B210DE,
    pci_subsystem_id=0x147F10DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_AMPERE,
    vbios_version="92.00.9E.00.02",
    power_default_w=500.0,
    power_min_w=100.0,
    power_max_w=500.0,
    thresholds=Thresholds(shutdown=92, slowdown=89, max_operating=85, memory_max=95),
    thresholds_absolute=True,
    thresholds_tlimit=False,
    memory_tlimit=False,
    max_clocks_mhz=(1410, 1410, 1593, 1290),
    idle_clocks_mhz=(210, 210, 1593, 585),
    idle_pstate=0,
    idle_pcie_generation=4,
    memory_total_mib=81920,
    memory_reserved_mib=763,
    bar1_total_mib=131072,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=True,
    fan=False,
    fan_zero_rpm=False,
    serial=True,
    nvlink_links=12,
    power_average_field=False,  # GA100 reports instantaneous power only
    idle_power_w=60.0,
    demand_power_w=540.0,
    ambient_celsius=22.0,
    thermal_resistance_c_per_w=0.09,
    thermal_time_constant_s=70.0,
    memory_temperature_offset_c=17.0,
    memory_temperature_ratio=0.45,
)

# H100 80GB HBM3 (SXM), driver 590.48.01 (h100-sxm-80gb-hbm3__590.48.01.txt): T.Limit -8/-2/0 and
# memory T.Limit 0, the point at 87 °C (41 + 46 idle); idles at P0, 345 MHz SM, PCIe Gen5; HBM3
# warmer than the die at idle (48 vs 41), cooler under load (55 vs 59); 18 NVLink links.
_H100 = DeviceProfile(
    key="h100",
    name="NVIDIA H100 80GB HBM3",
    pci_device_id=0x233010DE,
    pci_subsystem_id=0x16C110DE,
    brand=abi.BRAND_NVIDIA,
    architecture=abi.ARCH_HOPPER,
    vbios_version="96.00.A5.00.01",
    power_default_w=700.0,
    power_min_w=200.0,
    power_max_w=700.0,
    thresholds=Thresholds(shutdown=95, slowdown=89, max_operating=87, memory_max=95),
    thresholds_absolute=False,
    thresholds_tlimit=True,
    memory_tlimit=True,
    max_clocks_mhz=(1980, 1980, 2619, 1545),
    idle_clocks_mhz=(345, 345, 2619, 765),
    idle_pstate=0,
    idle_pcie_generation=5,
    memory_total_mib=81559,
    memory_reserved_mib=479,
    bar1_total_mib=131072,
    pcie_max_generation=5,
    pcie_max_width=16,
    ecc=True,
    row_remapping=True,
    memory_temperature=True,
    fan=False,
    fan_zero_rpm=False,
    serial=True,
    nvlink_links=18,
    power_average_field=True,
    idle_power_w=70.0,
    demand_power_w=730.0,
    ambient_celsius=30.0,
    thermal_resistance_c_per_w=0.045,
    thermal_time_constant_s=60.0,
    memory_temperature_offset_c=8.0,
    memory_temperature_ratio=0.4,
)

# H200 (SXM, 141 GB HBM3e), driver 590.48.01 (h200__590.48.01.txt): 700/200/700 W, 143771 MiB
# (614 reserved), T.Limit -8/-2/0 and memory T.Limit 0 with the point at 87 °C, BAR1 256 GiB, Gen5
# x16 even idle, idle P0 at 345 MHz and 75-83 W, ECC on, 3072 remap banks, 18 NVLink links. HBM3e
# 32 vs 28 °C idle, 41 vs 52 at 628 W. The same board family as the H100: what differs is below.
_H200 = replace(
    _H100,
    key="h200",
    name="NVIDIA H200",
    pci_device_id=0x233510DE,
    pci_subsystem_id=0x18BE10DE,
    vbios_version="96.00.A5.00.03",
    max_clocks_mhz=(1980, 1980, 3201, 1545),
    idle_clocks_mhz=(345, 345, 3201, 765),
    memory_total_mib=143771,
    memory_reserved_mib=614,
    bar1_total_mib=262144,
    idle_power_w=78.0,
    demand_power_w=740.0,
    ambient_celsius=25.0,
    thermal_resistance_c_per_w=0.044,
    memory_temperature_offset_c=6.0,
    memory_temperature_ratio=0.37,
)

# 8x GeForce RTX 4090 server boards, driver 550.127.05 (rtx-4090__550.127.05.txt): 450 W max
# (Founders Edition: 600), T.Limit -7/-2/0 with the point at 84 °C (28 + 56), the target
# temperature 84 answered, ECC mode Disabled (supported: a GeForce answers, it is not N/A), row
# remapping supported (192 banks), no serial on these boards, fan stopped at idle.
_RTX4090 = DeviceProfile(
    key="rtx-4090",
    name="NVIDIA GeForce RTX 4090",
    pci_device_id=0x268410DE,
    pci_subsystem_id=0xF29710B0,
    brand=abi.BRAND_GEFORCE,
    architecture=abi.ARCH_ADA,
    vbios_version="95.02.3C.00.EB",
    power_default_w=450.0,
    power_min_w=150.0,
    power_max_w=450.0,
    thresholds=Thresholds(shutdown=91, slowdown=86, max_operating=84, target=84),
    thresholds_absolute=False,
    thresholds_tlimit=True,
    memory_tlimit=False,
    max_clocks_mhz=(3105, 3105, 10501, 2415),
    idle_clocks_mhz=(210, 210, 405, 1185),
    idle_pstate=8,
    idle_pcie_generation=1,
    memory_total_mib=24564,
    memory_reserved_mib=354,
    bar1_total_mib=256,
    pcie_max_generation=4,
    pcie_max_width=16,
    ecc=False,
    row_remapping=True,
    memory_temperature=False,
    fan=True,
    fan_zero_rpm=True,
    serial=False,
    nvlink_links=0,
    power_average_field=True,
    idle_power_w=25.0,
    demand_power_w=470.0,
    ambient_celsius=28.0,
    thermal_resistance_c_per_w=0.09,
    thermal_time_constant_s=100.0,
)

PROFILES: dict[str, DeviceProfile] = {p.key: p for p in (_A6000, _L40S, _A100_SXM4_80GB, _H100, _H200, _RTX4090)}
# Keys earlier releases used, still accepted in scenario files.
ALIASES: dict[str, str] = {"a100": "a100-sxm4-80gb"}
# Keys whose profile was removed (no real capture to ground it), with what to use instead.
REMOVED: dict[str, str] = {"l40": "l40s (the L40 had no capture to check a profile against)"}
