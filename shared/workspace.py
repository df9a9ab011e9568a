"""The workspace: one directory holding a deployment's data, weights, ONNX files and repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.errors import ArtifactError

DEFAULT_WORKDIR = "polyhead-work"


@dataclass(frozen=True)
class Workspace:
    """Paths inside ``--workdir`` (see the design notes for the layout)."""

    root: Path

    @staticmethod
    def at(root: str | Path) -> Workspace:
        """Workspace rooted at ``root`` (not created)."""
        return Workspace(Path(root))

    @property
    def config(self) -> Path:  # noqa: D102
        return self.root / "polyhead.yaml"

    @property
    def data(self) -> Path:  # noqa: D102
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:  # noqa: D102
        return self.root / "checkpoints"

    @property
    def trunk_dir(self) -> Path:  # noqa: D102
        return self.root / "trunk"

    @property
    def heads_dir(self) -> Path:  # noqa: D102
        return self.root / "heads"

    @property
    def repository(self) -> Path:  # noqa: D102
        return self.root / "model_repository"

    def variant(self, name: str) -> Path:
        """Directory of trunk variant ``name`` (``model.onnx`` + ``variant.json``)."""
        return self.trunk_dir / name

    def head(self, task: str) -> Path:
        """Directory of task head ``task`` (``model.onnx`` + ``head.json``)."""
        return self.heads_dir / task

    def variants(self) -> list[str]:
        """Names of variants on disk that have metadata."""
        if not self.trunk_dir.exists():
            return []
        return sorted(p.name for p in self.trunk_dir.iterdir()
                      if (p / "variant.json").exists() and not p.name.startswith("."))  # hidden = staging

    def tasks(self) -> list[str]:
        """Names of exported heads on disk."""
        if not self.heads_dir.exists():
            return []
        return sorted(p.name for p in self.heads_dir.iterdir()
                      if (p / "head.json").exists() and not p.name.startswith("."))

    def require(self, path: Path, hint: str) -> Path:
        """Return ``path`` or raise a clear error saying which command creates it."""
        if not path.exists():
            raise ArtifactError(f"{path} does not exist; {hint}")
        return path
