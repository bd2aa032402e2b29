"""NVLink per link: state, data bytes and error counters, in one field batch per GPU.

NVML: ``nvmlDeviceGetFieldValues`` with ``scopeId`` = the link, for these per-link fields (nvidia-smi
equivalents: ``nvidia-smi nvlink -s`` / ``-gt d`` / ``-e``):

* ``NVML_FI_DEV_NVLINK_GET_STATE`` (165): 1 active, 0 inactive;
* ``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX`` / ``_RX`` (138, 139): data sent and received, KiB since
  the driver loaded (payload only; the ``RAW`` twins 140/141 add protocol overhead). These replace
  ``nvmlDeviceGetNvLinkUtilizationCounter``, deprecated;
* ``NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY`` / ``_RECOVERY`` / ``_CRC`` (161-163): data-link replays,
  link recoveries (retraining) and CRC errors since the driver loaded;
* the per-link CRC flit and CRC data counters (``…CRC_FLIT_ERROR_COUNT_L0``-``L11``, ``…CRC_DATA_…``,
  ids 32-37/96-101 and 39-44/102-107), which NVML defines for links 0-11 only: on an 18-link Hopper
  links 12-17 have only the DL CRC count.

The link count comes first (``NVML_FI_DEV_NVLINK_LINK_COUNT``, 91): a card without NVLink answers
NotSupported or 0, and has no plan (no NVLink family is exported for it). Every entry is probed
once; those the driver does not answer are dropped from the batch, as for the scalar fields.
One batch of 18 x 8 entries is one call, but likely as many queries inside the driver [inf; not
measured on a real card], so it is read on the slow loop
(``--process-interval``): these are counters read as rates over minutes, and the link state changes
only when a link trains or fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pynvml

from gpuwatch.nvml.prepared import FieldRequest

KIB = 1024
LINK_COUNT_FIELD = pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT

# (what the value is, its label, field id); read with scopeId = link
_SCOPED: tuple[tuple[str, str, int], ...] = (
    ("state", "", pynvml.NVML_FI_DEV_NVLINK_GET_STATE),
    ("bytes", "transmit", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX),
    ("bytes", "receive", pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX),
    ("errors", "replay", pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY),
    ("errors", "recovery", pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY),
    ("errors", "crc", pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_CRC),
)
# Field ids per link for links 0-11 (NVML has no such ids beyond link 11): (label, ids by link)
_PER_LINK_IDS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("crc_flit", (*range(32, 38), *range(96, 102))),
    ("crc_data", (*range(39, 45), *range(102, 108))),
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the batch: the link, what it is (state, bytes, errors) and its label."""

    link: int
    kind: str
    label: str
    field_id: int
    scope_id: int


@dataclass(frozen=True, slots=True)
class NvLinkValues:
    """One read of a GPU's links."""

    active: dict[int, bool]
    bytes: dict[tuple[int, str], int]  # (link, direction) -> bytes
    errors: dict[tuple[int, str], int]  # (link, type) -> count


def entries(link_count: int) -> list[Entry]:
    """Every entry worth asking for a GPU with ``link_count`` links, by link."""
    out = []
    for link in range(link_count):
        out += [Entry(link, kind, label, field_id, link) for kind, label, field_id in _SCOPED]
        out += [Entry(link, "errors", label, ids[link], 0) for label, ids in _PER_LINK_IDS if link < len(ids)]
    return out


class NvLinkPlan:
    """The entries a GPU answered when probed, and the prepared batch that reads them."""

    def __init__(self, answered: Sequence[Entry]) -> None:
        self.entries = tuple(answered)
        self.request = FieldRequest([e.field_id for e in self.entries], [e.scope_id for e in self.entries])

    def decode(self, raw: Sequence[float | None]) -> NvLinkValues:
        """The batch's answers, converted (KiB -> bytes); an entry that failed this read is left out."""
        values = NvLinkValues({}, {}, {})
        for entry, value in zip(self.entries, raw, strict=True):
            if value is None:
                continue
            if entry.kind == "state":
                values.active[entry.link] = value == pynvml.NVML_FEATURE_ENABLED
            elif entry.kind == "bytes":
                values.bytes[entry.link, entry.label] = int(value) * KIB
            else:
                values.errors[entry.link, entry.label] = int(value)
        return values


def probe_entries(candidates: Sequence[Entry], raw: Sequence[float | None]) -> NvLinkPlan | None:
    """The plan of those ``candidates`` that answered (``raw`` in their order); None if none did."""
    answered = [entry for entry, value in zip(candidates, raw, strict=True) if value is not None]
    return NvLinkPlan(answered) if answered else None
