"""The latency controller: policy, actuator and the loop that composes them.

``policy`` decides (pure, time passed in), ``actuator`` reads and switches the trunk variants and
the batching delay on Triton, ``loop`` reads p95, decides, applies. Imports ``serving.monitoring``
and ``serving.triton``; never the CLI or the benchmarks.
"""

from serving.controller.actuator import Delay, TrunkSwitcher, Variant, format_delay, parse_delay, read_variants
from serving.controller.loop import Controller
from serving.controller.policy import ControllerConfig, Decision, Policy

__all__ = [
    "Controller", "ControllerConfig", "Decision", "Delay", "Policy", "TrunkSwitcher", "Variant", "format_delay",
    "parse_delay", "read_variants",
]  # fmt: skip
