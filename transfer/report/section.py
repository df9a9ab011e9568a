"""One section of the report page: its figures, the numbers behind them, and what is missing."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Missing:
    """Something the workspace lacks for a figure, and the command that makes it.

    Attributes:
        what: What is missing, e.g. ``"training loss history"``.
        command: The command (or step) that produces it.
    """

    what: str
    command: str

    def line(self) -> str:
        """``<what>: <command>``, as the page and the command line show it."""
        return f"{self.what}: {self.command}"


@dataclass(frozen=True)
class Section:
    """A titled part of the page.

    Attributes:
        key: Identifier (the HTML anchor and the key of :attr:`data` in the page's JSON block).
        title: Heading.
        caption: What the figures show, one or two sentences.
        figures: PNG files, each ``(name, bytes)``; empty when nothing could be drawn.
        data: The numbers behind the figures (plain JSON), written into the page.
        missing: What could not be drawn and how to get it.
    """

    key: str
    title: str
    caption: str
    figures: tuple[tuple[str, bytes], ...] = ()
    data: Any = None
    missing: tuple[Missing, ...] = field(default_factory=tuple)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it.

    Args:
        fig: A ``matplotlib.figure.Figure``.
        dpi: Resolution.

    Returns:
        The PNG file's bytes.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
