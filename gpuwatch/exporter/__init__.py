"""Prometheus exposition of the latest snapshot: one collector per concern, and the HTTP server."""
