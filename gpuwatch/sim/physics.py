"""The physics of one simulated GPU, stepped in fixed increments of simulated time.

Simple on purpose, plausible by construction, and checked against what real sweeps and throttling
reports show (the constants below, with their sources):

* Power (DVFS): board power is static power plus dynamic power. Dynamic power at a clock fraction
  ``f`` of the maximum SM clock is ``D·load·(A_MEM + A_SM·f·v(f)²)``: the memory system's share
  ``A_MEM`` does not follow the SM clock (the memory clock stays at its maximum under a power cap,
  as every capped card's ``nvidia-smi -q`` shows), the SM share follows ``f·V²``. Voltage tracks the
  clock down to a floor, ``v(f) = max(V_FLOOR, f)``; below the floor the voltage can go no lower
  and power falls only linearly with clock, which is why deep cuts stop paying (the energy/frequency
  convexity of De Vogeleer et al., arXiv:1404.3381). ``D`` is calibrated so that a GPU under full
  load at maximum clocks and 70 °C draws the profile's ``demand_power_w``.
* Leakage: static power grows exponentially with die temperature (De Vogeleer et al.,
  arXiv:1404.3381, exponential over 20-85 °C; ML.ENERGY "Thermally stable profiling", 2026: back-to-back
  runs read higher because leakage rises with temperature): ``LEAKAGE_SHARE·demand·2^((T-65)/LEAKAGE_DOUBLING_C)``,
  counted above its value at 35 °C so that an idle card draws the profile's idle power.
* Collective wait: a GPU of a tensor-parallel group that finishes its share of a step before the
  slowest member spins in the collective (NCCL's kernel stays resident) for the rest of the step.
  The simulated server sets the GPU's ``duty`` (share of the step it computes); while it waits
  its dynamic power falls to ``WAIT_POWER_SHARE`` of busy power. NVML's utilization counts the
  waiting kernel (a kernel is running), so ``utilization.gpu`` stays up; ``sm_active`` (the SMs'
  share of real work, what GPM's SM-activity metric shows) falls with the duty.
* SW power cap: the controller picks the highest clock whose power fits under the enforced limit
  (solved in closed form over the DVFS curve) and sets the SW power cap reason when that binds.
  With decode memory-bound at full clocks (see :mod:`gpuwatch.sim.inference`), a 15-20 % lower
  limit costs under 1 % of the tokens and decode throughput flattens above ~250 W on a 300 W card,
  as public sweeps show (InventiveHQ, "I capped my GPU to 150 W", RTX 5060 Ti: -17 % cap, <1 %
  tokens; LLM Garage power-limit sweep, 6x RTX 3090: decode flat from 250 W up; Samsi et al.,
  arXiv:2310.03003: A100 250 -> 175 W cut energy ~23 % for ~6-7 % latency).
* Thermal: first order, ``dT/dt = (ambient + R·P - T) / τ``. At the max-operating threshold a SW
  thermal controller lowers clocks (with limited authority); at the slowdown threshold the
  hardware halves them (HW thermal + HW slowdown) until the GPU cools 2 °C below it. An RTX A6000
  held at the SW thermal floor (75 %) and halved by HW slowdown runs at 780 MHz.
* Counters integrate: energy (mJ), violation time per policy (ns), PCIe bytes.

Constants marked [est] are estimates consistent with those sources, not measurements:
``V_FLOOR`` 0.67 [est: GA102 voltage/frequency curves reach their ~0.7 V floor near two thirds of
the 2.1 GHz boost clock, where the maximum is ~1.08 V], ``A_MEM`` 0.25 [est: GDDR6/HBM share of
board power under decode], ``WAIT_POWER_SHARE`` 0.45 [est: a spinning collective keeps clocks and
some SM activity], ``LEAKAGE_SHARE`` 0.08 at 65 °C doubling every 25 °C [est].

Fixed steps make the state at a simulated time independent of when it is read: a run is
reproducible from its seed, whatever the polling rhythm.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from gpuwatch.sim import abi
from gpuwatch.sim.profiles import DeviceProfile
from gpuwatch.sim.scenario import Fault, GpuSpec, SimProcess

STEP_S = 0.25
V_FLOOR = 0.67  # clock fraction below which the voltage stays at its floor [est, module doc]
A_MEM = 0.25  # share of dynamic power that does not follow the SM clock (memory system) [est]
A_SM = 1.0 - A_MEM
WAIT_POWER_SHARE = 0.45  # dynamic power while spinning in a collective, of busy power [est]
WAIT_SM_ACTIVITY = 0.1  # SM activity of a spinning collective kernel [est]
LEAKAGE_SHARE = 0.08  # leakage at 65 °C, of the profile's demand power [est]
LEAKAGE_DOUBLING_C = 25.0
_LEAKAGE_COLD_C = 35.0  # the profile's idle power is measured about here
_CALIBRATION_C = 70.0  # demand_power_w is drawn at full load and clocks at this die temperature
_MIN_CLOCK_FRACTION = 0.1  # the lowest clock a power cap can force (about 210 MHz on an A6000)
_SW_THERMAL_FLOOR = 0.75  # the SW thermal controller cannot take clocks below 75 % of max
_SW_THERMAL_RATE_PER_S = 0.01
_HW_SLOWDOWN_FACTOR = 0.5
_BUSY_LOAD = 0.02


@dataclass(slots=True)
class GpuState:
    """Everything a driver call can read about one GPU at the current simulated step."""

    temperature_c: float
    clocks_mhz: tuple[int, int, int, int]
    power_w: float = 0.0
    power_avg_w: float = 0.0
    energy_mj: float = 0.0
    reasons: int = abi.REASON_GPU_IDLE
    utilization_gpu: int = 0
    utilization_memory: int = 0
    fan_percent: int = 30
    pstate: int = 8
    pcie_generation: int = 1
    pcie_tx_bytes: float = 0.0
    pcie_rx_bytes: float = 0.0
    violation_ns: dict[int, float] = field(default_factory=dict)
    ecc_volatile: list[int] = field(default_factory=lambda: [0, 0])  # corrected, uncorrected
    ecc_aggregate: list[int] = field(default_factory=lambda: [0, 0])
    remapped_rows: list[int] = field(default_factory=lambda: [0, 0])  # correctable, uncorrectable
    remap_pending: int = 0
    remap_failure: int = 0
    lost: bool = False


class SimGpu:
    """One simulated GPU driven by a :class:`GpuSpec`."""

    def __init__(self, index: int, spec: GpuSpec, seed: int) -> None:
        self.index = index
        self.spec = spec
        self.profile: DeviceProfile = spec.card
        self.rng = random.Random(seed * 1009 + index)
        # Intermittent call faults draw from their own stream, so the physics stays a function of
        # simulated time alone however often the GPU is read.
        self._call_rng = random.Random(seed * 7919 + index)
        self.power_limit_w = spec.power_limit_w or self.profile.power_default_w
        # Drawn even where the scenario names them, so the rest of the run stays the same.
        uuid, serial = "GPU-" + _uuid_from(self.rng), f"13{self.rng.randrange(10**10, 10**11)}"
        self.uuid = spec.uuid or uuid
        self.serial = spec.serial or serial
        self.pci_bus = 0x1B + index * 0x20
        self.pci_bus_id = f"00000000:{self.pci_bus:02X}:00.0"
        if spec.pci_bus_id:
            self.pci_bus_id = spec.pci_bus_id.upper()
            self.pci_bus = int(self.pci_bus_id.split(":")[1], 16)
        self.load = 0.0  # the work asked of it in the latest step, 0..1
        # Set by a tensor-parallel server: the share of each step this GPU computes (the rest it
        # waits at the collective for a slower member), and the leader whose bursts it shares.
        self.duty = 1.0
        self.memory_duty = 1.0  # the share of each step its memory reads take
        self.sm_active = 0.0  # share of the latest step the SMs did real work (GPM's SM activity)
        self.burst_follows: SimGpu | None = None
        self._sw_thermal_scale = 1.0
        self._hw_thermal = False
        self._avg_window: deque[float] = deque(maxlen=round(1.0 / STEP_S))
        self._pending_faults = sorted(spec.faults, key=lambda f: f.at_s)
        self._active: list[Fault] = []
        self.processes: list[SimProcess] = list(spec.processes)  # a simulated server adds its own
        self._burst_rng = random.Random(seed * 7919 + index)
        self._burst_on = True
        self.event_log: list[tuple[int, int]] = []  # (event type, data), append-only; readers keep cursors
        self.time_s = 0.0
        start_power = self.profile.idle_power_w
        self.state = GpuState(
            temperature_c=spec.ambient_celsius + spec.thermal_resistance_c_per_w * start_power,
            clocks_mhz=self.profile.idle_clocks_mhz,
            # The counter counts since the driver loaded, which was some time before we started.
            energy_mj=self.rng.uniform(2e8, 9e8),
            power_w=start_power,
            power_avg_w=start_power,
            pstate=self.profile.idle_pstate,
            pcie_generation=self.profile.idle_pcie_generation,
            fan_percent=self._fan_percent(spec.ambient_celsius + spec.thermal_resistance_c_per_w * start_power),
        )
        self.state.violation_ns = {policy: 0.0 for policy in range(6)}

    # -- faults ---------------------------------------------------------------------------------

    def fault_active(self, kind: str) -> Fault | None:
        """The fault of this kind in force now, if any."""
        for fault in self._active:
            if fault.kind == kind and fault.active_at(self.time_s):
                return fault
        return None

    def failing_call(self) -> int | None:
        """The error a driver call for this GPU answers now under an unknown_error or not_supported fault."""
        if not self._active:  # the common case, once per driver call: no fault has struck
            return None
        for kind, code in (("unknown_error", abi.ERROR_UNKNOWN), ("not_supported", abi.ERROR_NOT_SUPPORTED)):
            fault = self.fault_active(kind)
            if fault is not None and (fault.ratio >= 1 or self._call_rng.random() < fault.ratio):
                return code
        return None

    def hang_s(self) -> float:
        """Wall seconds a driver call for this GPU blocks now (a ``hang`` fault), or 0."""
        if not self._active:
            return 0.0
        fault = self.fault_active("hang")
        return 0.0 if fault is None else fault.hang_s

    def driver_reloaded(self) -> None:
        """The driver was reloaded: every count "since driver load" starts again from zero."""
        s = self.state
        s.energy_mj = 0.0
        s.ecc_volatile = [0, 0]
        s.pcie_tx_bytes = s.pcie_rx_bytes = 0.0
        s.violation_ns = dict.fromkeys(s.violation_ns, 0.0)

    def _fire_due_faults(self) -> None:
        s = self.state
        while self._pending_faults and self._pending_faults[0].at_s <= self.time_s:
            fault = self._pending_faults.pop(0)
            self._active.append(fault)
            if fault.kind == "fall_off_bus":
                # Xid 79 reaches the kernel log only; NVML delivers no event for it (DCGM issue 162):
                # the GPU simply answers GPU_IS_LOST from now on.
                s.lost = True
            elif fault.kind == "ecc_corrected":
                s.ecc_volatile[0] += fault.count
                s.ecc_aggregate[0] += fault.count
                self.event_log.append((abi.EVENT_SINGLE_BIT_ECC, 0))
            elif fault.kind == "ecc_uncorrected":
                s.ecc_volatile[1] += fault.count
                s.ecc_aggregate[1] += fault.count
                self.event_log.append((abi.EVENT_DOUBLE_BIT_ECC, 0))
                self.event_log.append((abi.EVENT_XID_CRITICAL, 48))
            elif fault.kind == "row_remap_pending":
                s.remapped_rows[1] += fault.count
                s.remap_pending = 1
                s.ecc_aggregate[1] += fault.count
                self.event_log.append((abi.EVENT_XID_CRITICAL, 63))
            elif fault.kind == "row_remap_failure":
                s.remap_failure = 1
                self.event_log.append((abi.EVENT_XID_CRITICAL, 64))
            elif fault.kind == "xid":
                self.event_log.append((abi.EVENT_XID_CRITICAL, fault.xid))
            elif fault.kind == "energy_reset":
                s.energy_mj = 0.0
            elif fault.kind == "gpu_reset":
                # A reset brings back a GPU that fell off the bus, applies pending row remaps and
                # restarts the counts a reset clears (nvidia-smi --gpu-reset).
                s.lost = False
                s.energy_mj = 0.0
                s.ecc_volatile = [0, 0]
                s.remap_pending = 0

    # -- stepping -------------------------------------------------------------------------------

    def load_at(self, t: float) -> float:
        level = 0.0
        for at, value in self.spec.load_steps:
            if at <= t:
                level = value
        return level

    def _bursty(self, load: float) -> float:
        """Bursty work (decode waves as requests come and go): on and off spells of random length."""
        spec = self.spec
        if spec.burst_on_s is None or spec.burst_off_s is None:
            return load
        if self.burst_follows is not None:
            # One request stream feeds a whole tensor-parallel group: its members burst together.
            self._burst_on = self.burst_follows._burst_on
            return load if self._burst_on else load * spec.burst_low
        mean_s = spec.burst_on_s if self._burst_on else spec.burst_off_s
        if self._burst_rng.random() < STEP_S / mean_s:
            self._burst_on = not self._burst_on
        return load if self._burst_on else load * spec.burst_low

    def ambient_at(self, t: float) -> float:
        spec = self.spec
        rising = spec.ambient_celsius + spec.ambient_rise_celsius_per_minute * t / 60.0
        return min(rising, spec.ambient_max_celsius)

    def step(self) -> None:
        """Advance by one :data:`STEP_S` of simulated time."""
        self.time_s += STEP_S
        self._fire_due_faults()
        s, p = self.state, self.profile
        if s.lost:
            return
        thresholds = p.thresholds
        load = self._bursty(self.load_at(self.time_s))
        self.load = load
        busy = load > _BUSY_LOAD
        # While it waits at a collective its dynamic power falls to the wait level.
        duty = self.duty if busy else 1.0
        activity = duty + (1.0 - duty) * WAIT_POWER_SHARE
        static_w = static_power_w(p, s.temperature_c)
        cap_scale = capped_clock_fraction(p, self.power_limit_w - static_w, load * activity) if busy else 1.0

        # SW thermal controller around the max-operating threshold, with limited authority.
        if s.temperature_c >= thresholds.max_operating:
            self._sw_thermal_scale = max(_SW_THERMAL_FLOOR, self._sw_thermal_scale - _SW_THERMAL_RATE_PER_S * STEP_S)
        elif s.temperature_c < thresholds.max_operating - 1.5:
            self._sw_thermal_scale = min(1.0, self._sw_thermal_scale + _SW_THERMAL_RATE_PER_S * STEP_S)
        # HW thermal slowdown with 2 °C of hysteresis.
        if s.temperature_c >= thresholds.slowdown:
            self._hw_thermal = True
        elif s.temperature_c < thresholds.slowdown - 2:
            self._hw_thermal = False
        brake = self.fault_active("power_brake") is not None

        reasons = 0
        scale = 1.0
        if not busy:
            reasons |= abi.REASON_GPU_IDLE
        else:
            scale = min(cap_scale, self._sw_thermal_scale)
            if cap_scale < 1.0 and cap_scale <= self._sw_thermal_scale:
                reasons |= abi.REASON_SW_POWER_CAP
            if self._sw_thermal_scale < 1.0 and self._sw_thermal_scale < cap_scale:
                reasons |= abi.REASON_SW_THERMAL
        if self._hw_thermal:
            scale *= _HW_SLOWDOWN_FACTOR
            reasons |= abi.REASON_HW_THERMAL | abi.REASON_HW_SLOWDOWN
        if brake:
            scale *= _HW_SLOWDOWN_FACTOR
            reasons |= abi.REASON_HW_POWER_BRAKE | abi.REASON_HW_SLOWDOWN

        noise = self.rng.gauss(0.0, 0.004)
        if busy:
            power = static_w + dynamic_power_w(p, scale, load * activity)
            power = min(power * (1.0 + noise), self.power_limit_w * 1.01)
            _, max_sm, max_mem, max_video = p.max_clocks_mhz
            sm = _quantize(max_sm * scale)
            s.clocks_mhz = (sm, sm, max_mem, _quantize(max_video * scale))
            # A collective's wait is a resident kernel: NVML's utilization counts it, SM activity does not.
            s.utilization_gpu = min(100, max(1, round(100 * load + 2 * self.rng.gauss(0, 1))))
            memory_duty = self.memory_duty if busy else 1.0
            s.utilization_memory = min(100, max(0, round(60 * load * memory_duty + self.rng.gauss(0, 1))))
            self.sm_active = load * (duty + (1.0 - duty) * WAIT_SM_ACTIVITY)
            s.pstate = 0
            s.pcie_generation = p.pcie_max_generation
            s.pcie_tx_bytes += 1.5e9 * load * STEP_S
            s.pcie_rx_bytes += 0.6e9 * load * STEP_S
        else:
            power = static_power_w(p, s.temperature_c) * (1.0 + 4 * noise)
            self.sm_active = 0.0
            s.clocks_mhz = p.idle_clocks_mhz
            s.utilization_gpu = 0
            s.utilization_memory = 0
            s.pstate = p.idle_pstate
            s.pcie_generation = p.idle_pcie_generation
        s.power_w = power
        self._avg_window.append(power)
        s.power_avg_w = sum(self._avg_window) / len(self._avg_window)
        s.energy_mj += power * STEP_S * 1000.0
        s.reasons = reasons

        ambient = self.ambient_at(self.time_s)
        target_c = ambient + self.spec.thermal_resistance_c_per_w * power
        s.temperature_c += (target_c - s.temperature_c) * (1.0 - math.exp(-STEP_S / self.spec.thermal_time_constant_s))
        s.fan_percent = self._fan_percent(s.temperature_c)

        step_ns = STEP_S * 1e9
        if reasons & abi.REASON_SW_POWER_CAP:
            s.violation_ns[abi.PERF_POLICY_POWER] += step_ns
        if reasons & (abi.REASON_SW_THERMAL | abi.REASON_HW_THERMAL):
            s.violation_ns[abi.PERF_POLICY_THERMAL] += step_ns
        if reasons & abi.REASON_GPU_IDLE:
            s.violation_ns[abi.PERF_POLICY_LOW_UTILIZATION] += step_ns

    # -- derived readings -----------------------------------------------------------------------

    def _fan_percent(self, temperature_c: float) -> int:
        if self.profile.fan_zero_rpm and temperature_c < 50:
            return 0  # GeForce boards stop their fans while cool (the RTX 4090 capture: 0 % at idle)
        return int(min(100, max(30, 30 + (temperature_c - 45) * 1.6)))

    def used_memory_bytes(self) -> int:
        return sum(p.used_memory_bytes for p in self.processes) + 1024 * 1024

    def memory_temperature_c(self) -> float:
        """HBM temperature: warmer than the die at idle, cooler under load, as the Hopper captures show."""
        p, ambient = self.profile, self.ambient_at(self.time_s)
        return (
            ambient + p.memory_temperature_offset_c + p.memory_temperature_ratio * (self.state.temperature_c - ambient)
        )

    def margin_c(self) -> float:
        """Degrees left to the first slowdown threshold (what nvmlDeviceGetMarginTemperature gives)."""
        return self.profile.thresholds.max_operating - self.state.temperature_c


def _leakage_w(profile: DeviceProfile, temperature_c: float) -> float:
    doublings: float = (temperature_c - 65.0) / LEAKAGE_DOUBLING_C
    return LEAKAGE_SHARE * profile.demand_power_w * math.pow(2.0, doublings)


def static_power_w(profile: DeviceProfile, temperature_c: float) -> float:
    """Idle power at ``temperature_c``: the profile's idle power plus the leakage above 35 °C."""
    return profile.idle_power_w + _leakage_w(profile, temperature_c) - _leakage_w(profile, _LEAKAGE_COLD_C)


def _dynamic_full_w(profile: DeviceProfile) -> float:
    """D: dynamic power at full load and maximum clocks (``demand_power_w`` at 70 °C, less static)."""
    return max(1.0, profile.demand_power_w - static_power_w(profile, _CALIBRATION_C))


def _sm_term(clock_fraction: float) -> float:
    """f·v(f)²: the SM share of dynamic power at a clock fraction (1 at maximum clocks)."""
    return clock_fraction * max(V_FLOOR, clock_fraction) ** 2


def dynamic_power_w(profile: DeviceProfile, clock_fraction: float, activity: float) -> float:
    """Dynamic power at a clock fraction for ``activity`` = load x (duty and wait mix), 0..1."""
    return _dynamic_full_w(profile) * activity * (A_MEM + A_SM * _sm_term(clock_fraction))


def capped_clock_fraction(profile: DeviceProfile, headroom_w: float, activity: float) -> float:
    """The highest clock fraction whose dynamic power fits in ``headroom_w`` (1.0 when the cap does not bind).

    Closed form over the DVFS curve: ``f³`` above the voltage floor, linear in ``f`` below it."""
    full = _dynamic_full_w(profile) * activity
    if full <= headroom_w:
        return 1.0
    target = (headroom_w / full - A_MEM) / A_SM if full > 0 else 1.0
    # Above the floor power goes with f³; below it voltage cannot fall, so power goes with f alone.
    fraction = target ** (1.0 / 3.0) if target >= V_FLOOR**3 else target / V_FLOOR**2
    return max(_MIN_CLOCK_FRACTION, fraction)


def _quantize(mhz: float) -> int:
    # Real GPUs step their clocks in 15 MHz bins.
    return max(0, int(mhz // 15 * 15))


def _uuid_from(rng: random.Random) -> str:
    raw = f"{rng.getrandbits(128):032x}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
