"""Render, validate and check the Kubernetes deployment (`make k8s`, `python -m k8s`)."""
