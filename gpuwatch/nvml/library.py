"""Which driver library pynvml talks to: the system's ``libnvidia-ml.so.1`` or a simulated one."""

from __future__ import annotations

from typing import Any

import pynvml


def use_library(library: Any) -> None:
    """Install ``library`` as the NVML driver library pynvml calls into.

    pynvml keeps the loaded library in its module global ``nvmlLib`` and caches each symbol it
    resolves. Replacing the global (and dropping the cache) puts ``library`` beneath every pynvml
    function; with ``None`` the next ``nvmlInit`` loads the system library again.
    """
    with pynvml.libLoadLock:
        pynvml.nvmlLib = library
        pynvml._nvmlGetFunctionPointer_cache.clear()
