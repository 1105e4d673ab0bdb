"""Kiln operator: reconciles kiln.dev objects into Kubernetes workloads."""
