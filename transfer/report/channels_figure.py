"""The channels each pruned variant kept per block, against the reference's (from ``variant.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.trunk import TrunkConfig
from transfer.report.section import Missing, Section, png_bytes, pyplot

PRUNE_HINT = "run `polyhead compress --workdir W` (its pruning rounds write trunk_config.backbone.hidden)"


def hidden_widths(meta: Mapping[str, Any]) -> list[int] | None:
    """Expanded (hidden) width of every backbone block of a variant; ``None`` without ``trunk_config``.

    Unpruned trunks store ``hidden: null``: their widths are the architecture's defaults
    (:meth:`shared.backbone.BackboneConfig.default_hidden`).
    """
    if not meta.get("trunk_config"):
        return None
    backbone = TrunkConfig.from_dict(meta["trunk_config"]).backbone
    return list(backbone.hidden or backbone.default_hidden())


def channels_data(variants: Mapping[str, dict], reference: str) -> dict[str, Any]:
    """Per variant: ``hidden`` widths, ``kept`` (hidden / the reference's, per block) and contract ``channels``.

    Returns:
        ``{"reference": name, "variants": {name: {"hidden": [int], "kept": [float], "channels": {p3: int, ...},
        "pruned": bool}}}``; ``pruned`` when any block is narrower than the reference's.
    """
    ref = hidden_widths(variants[reference])
    out = {}
    for name, meta in variants.items():
        hidden = hidden_widths(meta)
        if hidden is None or ref is None or len(hidden) != len(ref):
            continue
        channels = meta.get("channels") or {k: v["channels"] for k, v in (meta.get("contract") or {}).items()}
        out[name] = {"hidden": hidden, "kept": [h / r for h, r in zip(hidden, ref)], "channels": channels,
                     "pruned": any(h < r for h, r in zip(hidden, ref))}
    return {"reference": reference, "variants": out}


def channels_section(variants: Mapping[str, dict], reference: str) -> Section:
    """Bars of the reference's hidden widths per block, one bar beside it per pruned variant."""
    data = channels_data(variants, reference)
    rows = data["variants"]
    pruned = [n for n, r in rows.items() if r["pruned"]]
    caption = ("Expanded (hidden) channels of every backbone block kept by pruning, against the reference's; "
               "the contract maps (p3/p4/p5) keep their width: " +
               ", ".join(f"{n} {r['channels']}" for n, r in rows.items() if n in (reference, *pruned)) + ".")
    if reference not in rows or not pruned:
        return Section("channels", "Channels kept after pruning", caption, data=data,
                       missing=(Missing("a pruned variant", PRUNE_HINT),))
    names = [reference, *pruned]
    blocks = np.arange(len(rows[reference]["hidden"]))
    width = 0.8 / len(names)
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(blocks) + 3), 7), sharex=True)
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * width
        top.bar(blocks + offset, rows[name]["hidden"], width, label=name)
        if name != reference:
            bottom.bar(blocks + offset, [100 * k for k in rows[name]["kept"]], width, label=name, color=f"C{i}")
    top.set(ylabel="hidden channels", title="hidden channels per block")
    bottom.set(xlabel="backbone block", ylabel="kept (% of reference)", ylim=(0, 105))
    bottom.set_xticks(blocks)
    for ax in (top, bottom):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return Section("channels", "Channels kept after pruning", caption, (("channels.png", png_bytes(fig)),), data)
