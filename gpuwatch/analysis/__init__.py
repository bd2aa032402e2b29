"""Pure decisions over readings: no I/O, no clock, no NVML."""
