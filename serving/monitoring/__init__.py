"""Latency metrics.

polyhead's Prometheus metrics, the instrumented client, the Prometheus reader and the exporter that
turns Triton's counters into histograms. Imports ``serving.client``, ``serving.triton.model_names`` and ``shared``.
"""
