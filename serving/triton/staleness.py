"""Whether a built repository still matches its workspace: what was added, removed or changed since.

``build.json`` records the sha256 of every admitted trunk variant and every head it was built
from (``sources``; hot adds update it). :func:`stale_reasons` compares those with the workspace
as it is now, so ``polyhead serve`` never serves an old repository silently.
"""

from __future__ import annotations

from pathlib import Path

from serving.triton.workspace_artifacts import read_heads, read_trunks
from shared.artifacts import read_json

_KINDS = (("heads", "head"), ("trunk", "trunk variant"))


def workspace_sources(workdir: Path) -> dict[str, dict[str, str]]:
    """``{"trunk": {variant: sha256}, "heads": {task: sha256}}`` of the admitted variants and the heads now."""
    return {"trunk": {t.name: t.sha256 for t in read_trunks(Path(workdir))},
            "heads": {h.task: h.sha256 for h in read_heads(Path(workdir))}}


def stale_reasons(workdir: Path, repo: Path) -> list[str]:
    """What differs between ``repo`` and the workspace it was built from; empty when it is up to date.

    Returns:
        One phrase per difference, e.g. ``"head 'photos' added"``, ``"trunk variant 'int8' removed"``,
        ``"head 'signs' changed"``; a repository built before sources were recorded gives one phrase.

    Raises:
        ArtifactError: If ``repo`` has no readable ``build.json`` or the workspace's records are corrupt.
    """
    build = read_json(Path(repo) / "build.json", "repository build", fix="rebuild it with `polyhead export`",
                      expect=dict)
    recorded = build.get("sources")
    if not isinstance(recorded, dict):
        return ["it was built before repositories recorded their sources"]
    now = workspace_sources(workdir)
    reasons = []
    for kind, label in _KINDS:
        old, new = recorded.get(kind, {}), now[kind]
        reasons += [f"{label} '{n}' added" for n in sorted(new.keys() - old.keys())]
        reasons += [f"{label} '{n}' removed" for n in sorted(old.keys() - new.keys())]
        reasons += [f"{label} '{n}' changed" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
    return reasons
