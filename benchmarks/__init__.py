"""Overhead benchmarks: gpuwatch against gpustat and nvitop on the same simulated GPUs.

Run ``python -m benchmarks`` from the repository root (``--quick`` for the CI smoke run).
"""
