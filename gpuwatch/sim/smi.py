"""Read the text ``nvidia-smi -q`` prints, from any driver, into per-GPU records.

The format is an indented tree of ``Key : value`` lines and section headers, one ``GPU
dddddddd:bb:dd.f`` block per GPU. It drifts between driver branches (``Power Readings`` became ``GPU
Power Readings``, ``Enforced Power Limit`` became ``Current Power Limit``, ``Clocks Throttle
Reasons`` became ``Clocks Event Reasons``, ``Gpu`` became ``GPU``), sections come and go (``Remapped
Rows`` from Ampere, ``MIG Device`` blocks with MIG on), and a value a card does not answer reads
``N/A``, ``[N/A]``, ``Not Supported`` or ``Requested functionality has been deprecated``. This
reader therefore looks keys up case-insensitively under several spellings and turns every such
placeholder into ``None``; it never fails on a key it does not know.

A file may hold more than one ``-q`` output (the captures in ``tests/data/captures/`` have an idle
and a load section, marked ``=== idle :: ...`` / ``=== load :: ...``) and other ``nvidia-smi`` output
around them; ``nvidia-smi nvlink -s`` output, where present, gives each GPU's NVLink link count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# What nvidia-smi prints where a card or driver gives no value.
_NO_VALUE = frozenset(
    {
        "",
        "n/a",
        "[n/a]",
        "not supported",
        "[not supported]",
        "not available",
        "unknown error",
        "[unknown error]",
        "insufficient permissions",
        "[insufficient permissions]",
        "requested functionality has been deprecated",
        "[requested functionality has been deprecated]",
        "gpu is lost",
        "[gpu is lost]",
    }
)
_GPU_HEADER = re.compile(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_PHASE = re.compile(r"^===\s*([^:=]+?)\s*(?:::|$)")
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?")
_NVLINK_GPU = re.compile(r"^GPU (\d+): ")
_NVLINK_LINK = re.compile(r"^\s+Link \d+: ")
_MASKED = re.compile(r"^(GPU-|MIG-)?[0-]+$")


@dataclass(slots=True)
class Node:
    """One line of the tree: ``key : value`` (``value`` None for a section header) and what is indented below."""

    key: str
    value: str | None
    children: list[Node] = field(default_factory=list)

    def find(self, *path: str | tuple[str, ...]) -> Node | None:
        """The first node along ``path``; each step a key or a tuple of spellings, case-insensitive."""
        node: Node | None = self
        for step in path:
            names = {step.lower()} if isinstance(step, str) else {s.lower() for s in step}
            node = next((c for c in node.children if c.key.lower() in names), None) if node else None
        return node

    def text(self, *path: str | tuple[str, ...]) -> str | None:
        """The value at ``path``, or None where it is missing or nvidia-smi printed a placeholder."""
        node = self.find(*path)
        if node is None or node.value is None or node.value.strip().lower() in _NO_VALUE:
            return None
        return node.value.strip()

    def number(self, *path: str | tuple[str, ...]) -> float | None:
        """The leading number of the value at ``path`` (``700.00 W`` -> 700.0, ``16x`` -> 16)."""
        text = self.text(*path)
        match = _NUMBER.match(text) if text else None
        return float(match.group()) if match else None


@dataclass(frozen=True, slots=True)
class SmiProcess:
    """A process listed under a GPU's Processes block."""

    pid: int
    name: str
    used_memory_mib: float | None


@dataclass(slots=True)
class SmiGpu:
    """One ``GPU`` block: typed views of what the card answered, ``None`` where it did not."""

    bus_id: str
    tree: Node
    phase: str = ""  # the capture section it came from ("idle", "load"), if the file says
    log: int = 0  # which -q output in the file
    driver_version: str | None = None
    cuda_version: str | None = None

    # -- identity ------------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self.tree.text("Product Name")

    @property
    def brand(self) -> str | None:
        return self.tree.text("Product Brand")

    @property
    def architecture(self) -> str | None:
        return self.tree.text("Product Architecture")

    @property
    def serial(self) -> str | None:
        return self.tree.text("Serial Number")

    @property
    def uuid(self) -> str | None:
        return self.tree.text("GPU UUID")

    @property
    def vbios_version(self) -> str | None:
        return self.tree.text("VBIOS Version")

    @property
    def pci_device_id(self) -> int | None:
        return _hex(self.tree.text("PCI", "Device Id"))

    @property
    def pci_subsystem_id(self) -> int | None:
        return _hex(self.tree.text("PCI", "Sub System Id"))

    @property
    def mig_enabled(self) -> bool | None:
        return _flag(self.tree.text("MIG Mode", "Current"))

    @property
    def mig_devices(self) -> int:
        return sum(1 for c in self.tree.children if c.key.lower() == "mig device")

    # -- power ---------------------------------------------------------------------------------

    def power(self, key: str) -> float | None:
        """Watts from the power section: ``draw`` (average where both), ``instant``, ``enforced``,
        ``requested``, ``default``, ``min``, ``max``."""
        names = {
            "draw": ("Average Power Draw", "Power Draw"),
            "instant": ("Instantaneous Power Draw",),
            "enforced": ("Current Power Limit", "Enforced Power Limit"),
            "requested": ("Requested Power Limit", "Power Limit"),
            "default": ("Default Power Limit",),
            "min": ("Min Power Limit",),
            "max": ("Max Power Limit",),
        }[key]
        return self.tree.number(("GPU Power Readings", "Power Readings"), names)

    # -- thermal -------------------------------------------------------------------------------

    def temperature(self, key: str) -> float | None:
        """°C from the temperature section.

        ``current``, ``memory``; absolute thresholds ``shutdown``, ``slowdown``, ``max_operating``,
        ``memory_max``, ``target``; relative to T.Limit ``margin`` (the current T.Limit reading),
        ``shutdown_tlimit``, ``slowdown_tlimit``, ``max_operating_tlimit``, ``memory_max_tlimit``.
        """
        names = {
            "current": ("GPU Current Temp",),
            "memory": ("Memory Current Temp",),
            "shutdown": ("GPU Shutdown Temp",),
            "slowdown": ("GPU Slowdown Temp",),
            "max_operating": ("GPU Max Operating Temp",),
            "memory_max": ("Memory Max Operating Temp",),
            "target": ("GPU Target Temperature",),
            "margin": ("GPU T.Limit Temp",),
            "shutdown_tlimit": ("GPU Shutdown T.Limit Temp",),
            "slowdown_tlimit": ("GPU Slowdown T.Limit Temp",),
            "max_operating_tlimit": ("GPU Max Operating T.Limit Temp",),
            "memory_max_tlimit": ("Memory Max Operating T.Limit Temp",),
        }[key]
        return self.tree.number("Temperature", names)

    @property
    def fan_percent(self) -> float | None:
        return self.tree.number("Fan Speed")

    # -- clocks, performance -------------------------------------------------------------------

    def clocks(self, section: str = "Clocks") -> tuple[int | None, int | None, int | None, int | None]:
        """(graphics, sm, memory, video) MHz from ``Clocks`` or ``Max Clocks``."""
        graphics, sm, memory, video = (
            None if v is None else int(v)
            for v in (self.tree.number(section, key) for key in ("Graphics", "SM", "Memory", "Video"))
        )
        return graphics, sm, memory, video

    @property
    def pstate(self) -> int | None:
        text = self.tree.text("Performance State")
        match = re.match(r"^P(\d+)$", text or "")
        return int(match.group(1)) if match else None

    @property
    def idle(self) -> bool:
        """Whether the GPU is idle: the driver says so (the Idle clock event reason), or nothing runs
        on it and it shows no utilization (the reason can lag a moment behind)."""
        if self.tree.text(("Clocks Event Reasons", "Clocks Throttle Reasons"), "Idle") == "Active":
            return True
        return self.utilization_gpu == 0 and not self.processes

    @property
    def utilization_gpu(self) -> float | None:
        return self.tree.number("Utilization", "GPU")

    # -- memory --------------------------------------------------------------------------------

    def memory_mib(self, key: str) -> float | None:
        """``total``, ``reserved``, ``used`` of the framebuffer, or ``bar1`` (the BAR1 total), in MiB."""
        if key == "bar1":
            return self.tree.number("BAR1 Memory Usage", "Total")
        return self.tree.number("FB Memory Usage", key)

    # -- PCIe ----------------------------------------------------------------------------------

    def pcie(self, key: str) -> int | None:
        """``max_generation``, ``generation``, ``max_width``, ``width`` of the link."""
        section, name = {
            "max_generation": ("PCIe Generation", "Max"),
            "generation": ("PCIe Generation", "Current"),
            "max_width": ("Link Width", "Max"),
            "width": ("Link Width", "Current"),
        }[key]
        value = self.tree.number("PCI", "GPU Link Info", section, name)
        return None if value is None else int(value)

    # -- reliability ---------------------------------------------------------------------------

    @property
    def ecc_enabled(self) -> bool | None:
        """ECC mode: True or False where the card has ECC (a GeForce answers Disabled), None where N/A."""
        return _flag(self.tree.text("ECC Mode", "Current"))

    @property
    def row_remapping(self) -> bool:
        """Whether the card answers the row remapper (Ampere and newer; N/A with MIG enabled)."""
        return self.tree.text("Remapped Rows", ("Correctable Error", "Correctable")) is not None

    @property
    def remap_banks(self) -> int | None:
        value = self.tree.number("Remapped Rows", "Bank Remap Availability Histogram", "Max")
        return None if value is None else int(value)

    @property
    def retired_pages(self) -> bool:
        return self.tree.text("Retired Pages", "Single Bit ECC") is not None

    # -- processes -----------------------------------------------------------------------------

    @property
    def processes(self) -> list[SmiProcess]:
        section = self.tree.find("Processes")
        found = []
        for node in section.children if section else []:
            if node.key.lower() != "process id" or node.value is None or not node.value.strip().isdigit():
                continue
            found.append(
                SmiProcess(
                    pid=int(node.value.strip()),
                    name=node.text("Name") or "",
                    used_memory_mib=node.number("Used GPU Memory"),
                )
            )
        return found


@dataclass(slots=True)
class SmiCapture:
    """Everything read from one file: each ``GPU`` block in order, and the NVLink link counts."""

    gpus: list[SmiGpu]
    nvlink_links: dict[int, int] = field(default_factory=dict)  # by GPU index, from `nvidia-smi nvlink -s`

    @property
    def driver_version(self) -> str | None:
        return next((g.driver_version for g in self.gpus if g.driver_version), None)

    @property
    def cuda_version(self) -> str | None:
        return next((g.cuda_version for g in self.gpus if g.cuda_version), None)

    def host(self) -> list[SmiGpu]:
        """One block per GPU of the host: the first the file has for each bus id."""
        seen: dict[str, SmiGpu] = {}
        for gpu in self.gpus:
            seen.setdefault(gpu.bus_id.upper(), gpu)
        return list(seen.values())

    def blocks(self, bus_id: str) -> Iterator[SmiGpu]:
        """Every block of one GPU, in file order (idle and load sections)."""
        return (g for g in self.gpus if g.bus_id.upper() == bus_id.upper())

    def idle_block(self, bus_id: str) -> SmiGpu | None:
        """The first block in which the driver says that GPU is idle, if any."""
        return next((g for g in self.blocks(bus_id) if g.idle), None)


def parse(text: str) -> SmiCapture:
    """Parse ``nvidia-smi -q`` text (possibly several outputs, and other nvidia-smi output around them)."""
    lines = text.splitlines()
    gpus: list[SmiGpu] = []
    nvlink: dict[int, int] = {}
    phase, log, driver, cuda = "", -1, None, None
    nvlink_gpu: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        phase_match = _PHASE.match(line)
        if phase_match and not line.startswith("===="):
            phase = phase_match.group(1).strip().lower()
            nvlink_gpu = None
            continue
        if "NVSMI LOG" in line:
            log += 1
            driver = cuda = None
            continue
        header = _GPU_HEADER.match(line)
        if header:
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
                block.append(lines[i])
                i += 1
            gpus.append(
                SmiGpu(
                    bus_id=header.group(1),
                    tree=_tree(block),
                    phase=phase,
                    log=max(log, 0),
                    driver_version=driver,
                    cuda_version=cuda,
                )
            )
            continue
        key, _, value = line.partition(":")
        if value and key.strip() == "Driver Version":
            driver = value.strip()
        elif value and key.strip() == "CUDA Version":
            cuda = value.strip()
        gpu_line = _NVLINK_GPU.match(line)
        if gpu_line:
            nvlink_gpu = int(gpu_line.group(1))
        elif nvlink_gpu is not None and _NVLINK_LINK.match(lines[i - 1]):
            nvlink[nvlink_gpu] = nvlink.get(nvlink_gpu, 0) + 1
        elif nvlink_gpu is not None and "does not have or support nvlink" in line.lower():
            nvlink[nvlink_gpu] = 0
    return SmiCapture(gpus=gpus, nvlink_links=nvlink)


def looks_like_smi(text: str) -> bool:
    """Whether ``text`` holds at least one ``nvidia-smi -q`` GPU block."""
    return any(_GPU_HEADER.match(line) for line in text.splitlines())


def masked(value: str | None) -> bool:
    """Whether an identifier was masked when the capture was shared (all zeros)."""
    return value is not None and bool(_MASKED.match(value))


def _tree(block: list[str]) -> Node:
    root = Node("", None)
    stack: list[tuple[int, Node]] = [(-1, root)]
    for raw in block:
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        key, colon, value = raw.strip().partition(":")
        node = Node(key.strip(), value.strip() if colon else None)
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def _flag(text: str | None) -> bool | None:
    return {"enabled": True, "disabled": False}.get((text or "").lower())
