"""The only package that imports pynvml: NVML in, SI units and ``None`` for unsupported out."""

from gpuwatch.nvml.events import XidEvent, XidWatcher
from gpuwatch.nvml.library import use_library
from gpuwatch.nvml.reader import GpuLost, NvmlReader, NvmlSessionLost, NvmlUnavailable, PollFailed

__all__ = [
    "GpuLost",
    "NvmlReader",
    "NvmlSessionLost",
    "NvmlUnavailable",
    "PollFailed",
    "XidEvent",
    "XidWatcher",
    "use_library",
]
