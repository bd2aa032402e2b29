"""The simulated NVIDIA driver library that sits beneath pynvml (DESIGN §3)."""
