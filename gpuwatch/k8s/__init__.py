"""Kubernetes pod attribution: which pod and container a GPU process, a token source or a GPU
belongs to, from the kubelet's PodResources API or from ``/proc/PID/cgroup``."""
