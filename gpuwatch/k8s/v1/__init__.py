"""Python stubs of the kubelet's PodResources v1 API, generated from api.proto by gpuwatch/k8s/stubs.py."""
