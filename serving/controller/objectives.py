"""The latency controller's configuration as people write it: objectives, batching delays, the YAML file.

* :func:`parse_slo`: ``TASK=MILLISECONDS`` items (``polyhead monitor|optimize|bench controller --slo``).
* :func:`parse_delays`: the batching delays to try, ``"off,0,500"`` or a YAML list.
* :func:`load_optimize_yaml`: the ``polyhead optimize --config`` file; keys in :data:`OPTIMIZE_KEYS`
  (``device`` is the older name of ``serving_device``).

Every error is a :class:`shared.errors.ConfigError` naming the bad value and the expected form.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from serving.controller.actuator import Delay, parse_delay
from shared.errors import ConfigError

#: Keys of the ``polyhead optimize --config`` YAML (anything else is rejected).
OPTIMIZE_KEYS = {
    "prometheus", "server", "repository", "objectives_ms", "high", "low", "breach_evals",
    "recover_evals", "cooldown_s", "interval_s", "source", "serving_device", "device", "metrics_port", "dry_run",
    "batch_delays_us", "probe_margin", "probe_hold_s",
}  # fmt: skip
#: Options of ``ControllerConfig`` besides the objectives (flag and YAML key, same name).
CONFIG_KEYS = (
    "high", "low", "breach_evals", "recover_evals", "cooldown_s", "interval_s", "batch_delays_us", "probe_margin",
    "probe_hold_s",
)  # fmt: skip


def parse_slo(items: list[str]) -> dict[str, float]:
    """``["cars=50", "people=80"]`` (milliseconds) -> ``{"cars": 0.05, "people": 0.08}`` seconds.

    Args:
        items: ``TASK=MILLISECONDS`` strings; ``None`` or empty: no objectives.

    Returns:
        The p95 objective of each task, in seconds.

    Raises:
        ConfigError: Malformed item or non-positive value.
    """
    out = {}
    for item in items or []:
        task, sep, value = item.partition("=")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or not task or not ms > 0:
            raise ConfigError(f"--slo {item!r}: expected TASK=MILLISECONDS with a positive number, e.g. cars=50")
        out[task] = ms / 1e3
    return out


def parse_delays(value: object) -> tuple[Delay, ...]:
    """``"off,0,500"`` or a YAML list ``[off, 0, 500]`` -> ``(None, 0, 500)`` microseconds (off: ``None``).

    Args:
        value: A comma-separated string or a list; blank items are skipped.

    Returns:
        The delays in the order given (see :func:`serving.controller.actuator.parse_delay`).

    Raises:
        ConfigError: An item that is neither ``off`` nor whole microseconds >= 0.
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"batch delays {value!r}: expected a list like 0,500,2000 (microseconds; 'off' allowed)")
    return tuple(parse_delay(item) for item in items if not (isinstance(item, str) and not item.strip()))


def load_optimize_yaml(path: Path) -> dict:
    """Read the controller YAML; unknown keys are rejected by name.

    Args:
        path: The YAML file (a mapping of the keys in :data:`OPTIMIZE_KEYS`; empty: no options).

    Returns:
        The options as written (not validated beyond their names).

    Raises:
        ConfigError: Unreadable file, not a mapping, or an unknown key.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read controller config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}")
    unknown = sorted(set(data) - OPTIMIZE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(OPTIMIZE_KEYS)}")
    return data
