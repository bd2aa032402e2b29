"""gpuwatch: GPU telemetry for LLM inference hosts."""

__version__ = "0.1.0"
