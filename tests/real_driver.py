"""The real NVIDIA driver for the `gpu`-marked tests: a reader opened on it, or the test skipped."""

from __future__ import annotations

import pytest

from gpuwatch.nvml import NvmlReader, NvmlUnavailable


def real_reader() -> NvmlReader:
    """An :class:`NvmlReader` opened on this machine's driver; skips the test where there is none."""
    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    return reader
