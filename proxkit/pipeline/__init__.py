"""Pipelines: per-document record building, run statistics, and the local runner."""
