"""Serving: Triton runtime, client SDK, monitoring, the latency controller, benchmarks and the CLI.

The top layer: may import ``transfer``, ``heads`` and ``shared``; nothing imports it. Inside,
``triton`` and ``client`` are the floor; ``monitoring`` imports ``client``; ``controller`` imports
``monitoring`` and ``triton``; ``bench`` and ``cli`` sit on top of all of them.
"""
