"""Benchmarks behind ``polyhead bench ...``.

Serving, controller, their baselines, load generation, perf_analyzer and a real Prometheus for the
runs. May import every other part of ``serving``.
"""
