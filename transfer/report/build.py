"""``polyhead report``: gather the workspace, draw every section, write ``index.html``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shared.artifacts import atomic_write_bytes
from transfer.report.ap_breakdown import ap_section
from transfer.report.catalogue_figures import heatmap_section, pareto_section
from transfer.report.channels_figure import channels_section
from transfer.report.cka import similarity_section
from transfer.report.drawing import detections_section
from transfer.report.inputs import load_inputs
from transfer.report.loss_curves import loss_section
from transfer.report.page import render_page
from transfer.report.robustness_figure import robustness_section
from transfer.report.section import Missing, Section
from transfer.report.variant_runs import run_variants

PAGE = "index.html"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        path: The page (``<out>/index.html``).
        figures: Names of the figures drawn, in page order.
        missing: What the workspace lacks for the other figures, each with the command that makes it.
        seconds: Wall time of the build.
    """

    path: Path
    figures: tuple[str, ...]
    missing: tuple[Missing, ...]
    seconds: float


def build_report(workdir: str | Path, out: str | Path, threads: int = 2) -> ReportResult:
    """Write ``<out>/index.html`` about the workspace ``workdir`` (self-contained: open it anywhere).

    Reads every ``variant.json`` / ``head.json`` and the loss histories, runs each trunk variant
    with every head over the validation splits once (onnxruntime, ``threads`` threads), and draws
    what the workspace has; the page and :attr:`ReportResult.missing` name what it lacks.

    Raises:
        ArtifactError: If ``workdir`` has no ``reference`` trunk variant.
    """
    t0 = time.perf_counter()
    inputs = load_inputs(workdir)
    runs, run_missing = run_variants(inputs, threads)
    variants, reference = inputs.variants, inputs.reference
    scored = {t: len(d) for run in list(runs.values())[:1] for t, d in run.detections.items()}
    sections: list[Section] = [
        pareto_section(variants),
        heatmap_section(variants),
        ap_section({v: r.metrics for v, r in runs.items()}, scored),
        channels_section(variants, reference),
        similarity_section({v: r.features for v, r in runs.items()}, reference),
        robustness_section(variants),
        loss_section(inputs.workspace.checkpoints, variants),
        detections_section(inputs.vals, {v: r.detections for v, r in runs.items()}),
    ]
    workdir_flag = f"--workdir {inputs.workspace.root}"  # the hints' `--workdir W`, spelled for this workspace
    missing = tuple(Missing(m.what, m.command.replace("--workdir W", workdir_flag))
                    for m in (*inputs.missing, *run_missing, *(m for s in sections for m in s.missing)))
    seconds = time.perf_counter() - t0
    facts = [f"workspace: {inputs.workspace.root.name}",
             f"trunk variants: {', '.join(variants)} (reference: {reference})",
             f"tasks: {', '.join(inputs.heads) or 'none'}",
             f"built by `polyhead report` in {seconds:.1f} s"]
    page = render_page("polyhead report", facts, sections, missing)
    path = Path(out) / PAGE
    atomic_write_bytes(path, page.encode("utf-8"))
    path.chmod(0o644)  # a page to share: readable by others, like any file the browser opens
    figures = tuple(name for s in sections for name, _ in s.figures)
    return ReportResult(path, figures, missing, time.perf_counter() - t0)
