"""The systemd unit, sysusers file, defaults and config that `gpuwatch install-service` writes."""
