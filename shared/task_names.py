"""The one rule for task names, shared by training (``add-task``), serving and the Kubernetes facts.

A task name becomes a directory (``heads/<task>``), Triton model names (``head_<task>``,
``detect_<task>``) and Triton tensor names (``<task>_num_dets``, ``<task>_boxes``...), so it is
kept to a lowercase letter, then up to 31 lowercase letters, digits or ``_`` (1-32 characters).
This was ``add-task``'s rule; serving used to accept more (a leading digit, up to 63 characters),
which let it load heads that ``add-task`` would have refused to create.
"""

from __future__ import annotations

import re

from shared.errors import ConfigError, PolyheadError

#: Regex body (no anchors) of a valid task name; embed it in larger patterns (model names, k8s rules).
TASK_NAME_PATTERN = r"[a-z][a-z0-9_]{0,31}"
#: Compiled :data:`TASK_NAME_PATTERN`; use ``TASK_NAME_RE.fullmatch(name)``.
TASK_NAME_RE = re.compile(TASK_NAME_PATTERN)
#: The rule in words, for messages and help texts.
TASK_NAME_RULE = "1-32 characters: a lowercase letter, then lowercase letters, digits or '_'"


def is_task_name(name: object) -> bool:
    """Whether ``name`` is a valid task name."""
    return isinstance(name, str) and TASK_NAME_RE.fullmatch(name) is not None


def check_task_name(name: object, error: type[PolyheadError] = ConfigError) -> str:
    """Return ``name`` if it is a valid task name, else raise ``error`` naming it and the rule.

    Args:
        name: The candidate task name.
        error: Exception class raised (default :class:`ConfigError`: a name given by the user;
            serving passes :class:`~shared.errors.ArtifactError` for a directory found on disk).

    Raises:
        ConfigError: (or ``error``) If ``name`` breaks the rule.
    """
    if not is_task_name(name):
        raise error(
            f"task name {name!r} is invalid: use {TASK_NAME_RULE} (pattern {TASK_NAME_PATTERN}); "
            "it becomes Triton model and tensor names"
        )
    return name
