"""NVML calls prepared once per GPU and reused by every poll, where pynvml's wrappers cost more
than the call.

pynvml's wrappers build their output (a struct, or an array of field values) afresh on every
call, and set and read its members through Python-level hooks (``_PrintableStructure``). For the
few calls a fast poll makes on every GPU, that cost as much as the driver call itself on the
simulated library. These keep pynvml's part that matters: the symbol lookup
(``_nvmlGetFunctionPointer``, which raises FunctionNotFound for a driver without the symbol),
the error mapping (``_nvmlCheckReturn``) and pynvml's own declaration of each struct's layout.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

import pynvml


class StructQuery:
    """A getter that fills one versioned struct, ``fn(handle, &out)``: the struct is built once with
    its inputs (version, sensor) set, and each call returns the members named (one value, or a
    tuple of several), read before the call returns. One GPU is read by one thread at a time.
    """

    __slots__ = ("_get", "_handle", "_out", "_ref", "_symbol")

    def __init__(
        self, handle: Any, symbol: str, layout: type[ctypes.Structure], inputs: Mapping[str, int], *members: str
    ) -> None:
        self._out = _plain(layout)(**inputs)
        self._ref = ctypes.byref(self._out)
        self._handle = handle
        self._symbol = symbol
        self._get = attrgetter(*members)

    def __call__(self) -> Any:
        fn = pynvml._nvmlGetFunctionPointer(self._symbol)
        pynvml._nvmlCheckReturn(fn(self._handle, self._ref))
        return self._get(self._out)


# pynvml's struct -> the same layout without its hooks, made once per struct type
_PLAIN: dict[type[ctypes.Structure], type[ctypes.Structure]] = {}


def _plain(layout: type[ctypes.Structure]) -> type[ctypes.Structure]:
    """pynvml's struct ``layout`` without its per-attribute hooks (same fields, same size)."""
    plain = _PLAIN.get(layout)
    if plain is None:
        plain = _PLAIN[layout] = type(f"Plain_{layout.__name__}", (ctypes.Structure,), {"_fields_": layout._fields_})
        assert ctypes.sizeof(plain) == ctypes.sizeof(layout), f"{layout.__name__} layout"
    return plain


def temperature(handle: Any) -> StructQuery:
    """``nvmlDeviceGetTemperatureV`` for the GPU sensor (R570+): °C."""
    return StructQuery(
        handle,
        "nvmlDeviceGetTemperatureV",
        pynvml.c_nvmlTemperature_v1_t,
        {"version": pynvml.nvmlTemperature_v1, "sensorType": pynvml.NVML_TEMPERATURE_GPU},
        "temperature",
    )


def memory_info(handle: Any) -> StructQuery:
    """``nvmlDeviceGetMemoryInfo_v2`` (R515+): (total, used, free, reserved) in bytes."""
    return StructQuery(
        handle,
        "nvmlDeviceGetMemoryInfo_v2",
        pynvml.c_nvmlMemory_v2_t,
        {"version": pynvml.nvmlMemory_v2},
        "total",
        "used",
        "free",
        "reserved",
    )


def utilization(handle: Any) -> StructQuery:
    """``nvmlDeviceGetUtilizationRates``: (gpu, memory) in %."""
    return StructQuery(handle, "nvmlDeviceGetUtilizationRates", pynvml.c_nvmlUtilization_t, {}, "gpu", "memory")


# The member of a c_nvmlFieldValue_t's value union to read, by its valueType (signed types use sllVal/siVal).
VALUE_MEMBERS = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


_PlainFieldValue: Any = _plain(pynvml.c_nvmlFieldValue_t)


def _layouts() -> tuple[int, int, int]:
    """Size of ``c_nvmlFieldValue_t`` and the offsets of valueType (nvmlReturn right after it) and value."""
    t = _PlainFieldValue
    assert t.nvmlReturn.offset == t.valueType.offset + ctypes.sizeof(ctypes.c_uint), "c_nvmlFieldValue_t layout"
    return ctypes.sizeof(t), t.valueType.offset, t.value.offset


_ENTRY_SIZE, _TYPE_AT, _VALUE_AT = _layouts()
# valueType -> struct code of that member of the value union (from pynvml's own declaration of it).
_VALUE_CODES: dict[int, str] = {
    value_type: dict(pynvml.c_nvmlValue_t._fields_)[member]._type_ for value_type, member in VALUE_MEMBERS.items()
}


def _entries_struct(codes: list[str]) -> struct.Struct:
    """Reads one item per entry of a field-value array: ``codes[i]`` at entry i's value offset."""
    fmt = "@" + "".join(f"{_VALUE_AT}x{code}{_ENTRY_SIZE - _VALUE_AT - struct.calcsize('@' + code)}x" for code in codes)
    layout = struct.Struct(fmt)
    assert layout.size == _ENTRY_SIZE * len(codes), "c_nvmlFieldValue_t layout"
    return layout


class FieldRequest:
    """One GPU's ``nvmlDeviceGetFieldValues`` batch, built once and reused by every poll.

    pynvml's wrapper builds a fresh array per call, setting each id through a Python-level hook
    (and, for a bare int id, a caught TypeError); with ~20 ids that cost more than the rest of a
    poll. Here the ids are written once into a template, copied over the result array in C before
    each call, and the results are read without pynvml's hook: one unpack reads every entry's
    value type and return code, and once a batch has come back whole, one more reads every value
    while those stay the same. The symbol lookup and the error mapping are still pynvml's.
    """

    def __init__(self, field_ids: list[int], scope_ids: list[int] | None = None) -> None:
        n = len(field_ids)
        array = _PlainFieldValue * n
        self._template = array()
        for entry, field_id in zip(self._template, field_ids, strict=True):
            entry.fieldId = field_id
        if scope_ids is not None:  # per-link fields (NVLink) name their link in scopeId
            for entry, scope_id in zip(self._template, scope_ids, strict=True):
                entry.scopeId = scope_id
        self._values = array()
        self._count = ctypes.c_int32(n)
        pad = _ENTRY_SIZE - _TYPE_AT - 2 * ctypes.sizeof(ctypes.c_uint)
        self._heads = struct.Struct("@" + f"{_TYPE_AT}xII{pad}x" * n)  # (valueType, nvmlReturn) per entry
        self._whole: tuple[tuple[int, ...], struct.Struct] | None = None  # heads of a whole batch, and its reader

    def fetch(self, handle: Any) -> list[float | None]:
        """Call NVML; raise its error as pynvml would; each field's value, None where it failed."""
        values = self._values
        ctypes.memmove(values, self._template, ctypes.sizeof(values))
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
        pynvml._nvmlCheckReturn(fn(handle, self._count, ctypes.byref(values)))
        heads = self._heads.unpack_from(values)
        whole = self._whole
        if whole is not None and heads == whole[0]:
            return [float(v) for v in whole[1].unpack_from(values)]
        types, codes = heads[0::2], heads[1::2]
        if all(code == pynvml.NVML_SUCCESS for code in codes):
            reader = _entries_struct([_VALUE_CODES.get(t, "Q") for t in types])
            self._whole = (heads, reader)
            return [float(v) for v in reader.unpack_from(values)]
        out: list[float | None] = []
        for i, (value_type, code) in enumerate(zip(types, codes, strict=True)):
            if code != pynvml.NVML_SUCCESS:
                out.append(None)
                continue
            at = i * _ENTRY_SIZE + _VALUE_AT
            out.append(float(struct.unpack_from("@" + _VALUE_CODES.get(value_type, "Q"), values, at)[0]))
        return out
