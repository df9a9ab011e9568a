"""``polyhead report``: one self-contained HTML page of figures about a workspace.

:func:`build_report` reads the workspace (``variant.json``, ``head.json``, loss histories), runs
every trunk variant once over a few validation images with onnxruntime, draws the figures with
matplotlib (Agg) and Pillow and writes ``index.html`` with the PNGs as data URIs and the numbers
behind each figure as a JSON block. One module per figure or concept; imports ``shared`` and
``transfer`` only.
"""

from transfer.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
