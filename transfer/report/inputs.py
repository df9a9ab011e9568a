"""What the report reads from a workspace: every ``variant.json`` and ``head.json``, and the validation splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.artifact_records import read_head_json, read_variant_json
from shared.errors import ArtifactError
from shared.workspace import Workspace
from transfer.config import PolyheadConfig, load_config
from transfer.data.coco import CocoTask, load_coco
from transfer.export.publish import REFERENCE
from transfer.report.section import Missing
from transfer.train import data_root


@dataclass(frozen=True)
class ReportInputs:
    """A workspace as the report sees it.

    Attributes:
        workspace: The workspace.
        variants: Variant name -> ``variant.json`` content, the reference first, then by name.
        heads: Task -> ``head.json`` content, by task name.
        vals: Task -> its validation split (tasks whose split is not found are left out).
        missing: Validation splits that were not found, with the fix.
    """

    workspace: Workspace
    variants: dict[str, dict[str, Any]]
    heads: dict[str, dict[str, Any]]
    vals: dict[str, CocoTask]
    missing: tuple[Missing, ...]

    @property
    def reference(self) -> str:
        """The variant the others are compared with."""
        return REFERENCE

    @property
    def input_size(self) -> int:
        """The reference trunk's square input side S in pixels."""
        return int(self.variants[REFERENCE]["input_size"])


def load_inputs(workdir: str | Path) -> ReportInputs:
    """Read ``workdir``'s metadata and validation splits.

    Validation splits are found as ``polyhead compress`` finds them: ``head.json``'s ``val_json`` /
    ``images`` when recorded, else ``<data.root>/<task>/val.json`` with ``<data.root>/<data.images>``.

    Raises:
        ArtifactError: If the workspace has no ``reference`` trunk variant.
    """
    ws = Workspace.at(workdir)
    names = ws.variants()
    if REFERENCE not in names:
        raise ArtifactError(f"{ws.variant(REFERENCE)} has no variant.json; run `polyhead train --workdir {ws.root}` "
                            "before `polyhead report`")
    variants = {name: read_variant_json(ws.variant(name)) for name in [REFERENCE, *sorted(set(names) - {REFERENCE})]}
    heads = {task: read_head_json(ws.head(task)) for task in ws.tasks()}
    cfg = load_config(ws.config) if ws.config.exists() else PolyheadConfig()
    root = data_root(ws, cfg)
    vals, missing = {}, []
    for task, meta in heads.items():
        val_json = Path(meta.get("val_json") or root / task / "val.json")
        if not val_json.exists():
            missing.append(Missing(f"validation split of {task!r} ({val_json.name} not found)",
                                   "record val_json/images in its head.json, or restore the data directory"))
            continue
        vals[task] = load_coco(val_json, Path(meta.get("images") or root / cfg.data.images), name=task)
    return ReportInputs(ws, variants, heads, vals, tuple(missing))
