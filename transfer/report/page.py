"""The report's one self-contained HTML page: figures as PNG data URIs, the numbers as a JSON block."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

from transfer.report.section import Missing, Section

DATA_ID = "report-data"  # id of the <script type="application/json"> block holding every section's data

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.caption { color: #555; } img { max-width: 100%; display: block; margin: 0.6rem 0; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.4rem 0.8rem; }
code { background: #f3f3f3; padding: 0 0.2rem; } nav a { margin-right: 0.8rem; }
"""

# Marks the page once every figure decoded (headless checks read it from the DOM), and lists the broken ones.
_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-decoded", ok.length + "/" + images.length);
});
"""


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of a PNG file's bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _json_block(data: Any) -> str:
    """JSON safe inside ``<script>``: ``<`` escaped so no ``</script>`` can end the block early."""
    return json.dumps(data, indent=1, allow_nan=False, default=float).replace("<", "\\u003c")


def _missing_html(missing: Sequence[Missing]) -> str:
    items = "".join(f"<li>{html.escape(m.what)}: <code>{html.escape(m.command)}</code></li>" for m in missing)
    return f'<div class="missing"><b>Missing</b><ul>{items}</ul></div>' if missing else ""


def _section_html(section: Section) -> str:
    figures = "".join(f'<img src="{data_uri(png)}" alt="{html.escape(section.title)}: {html.escape(name)}" '
                      f'data-figure="{html.escape(name)}">' for name, png in section.figures)
    return (f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>'
            f'<p class="caption">{html.escape(section.caption)}</p>{figures}{_missing_html(section.missing)}</section>')


def render_page(title: str, facts: Sequence[str], sections: Sequence[Section], missing: Sequence[Missing]) -> str:
    """The whole page.

    Args:
        title: Heading and ``<title>``.
        facts: Short lines under the heading (workspace, variants, tasks, build time...).
        sections: In page order; each section's ``data`` goes into the JSON block under its ``key``.
        missing: Everything missing, listed at the top (each section also lists its own).

    Returns:
        HTML text; no external resource: the figures are data URIs, the data an inline JSON block.
    """
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    data = {s.key: {"title": s.title, "figures": [name for name, _ in s.figures], "data": s.data,
                    "missing": [m.line() for m in s.missing]} for s in sections}
    facts_html = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{html.escape(title)}</h1><ul>{facts_html}</ul><nav>{nav}</nav>{_missing_html(missing)}\n"
        + "\n".join(_section_html(s) for s in sections)
        + f'\n<script type="application/json" id="{DATA_ID}">{_json_block(data)}</script>'
        f"\n<script>{_CHECK}</script>\n</body></html>\n"
    )


def read_page_data(page: str) -> dict[str, Any]:
    """The JSON block of a page :func:`render_page` wrote (section key -> title, figures, data, missing)."""
    start = page.index(f'id="{DATA_ID}">') + len(f'id="{DATA_ID}">')
    return json.loads(page[start: page.index("</script>", start)])
