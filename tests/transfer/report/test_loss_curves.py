"""Fine-tune rounds from variant.json: each pruning chain once, keyed by every variant sharing it."""

from __future__ import annotations

from transfer.report.loss_curves import finetune_data


def _distill(loss: float) -> dict:
    return {"step": "distill", "steps": 60, "final_loss": loss, "holdout_feature_error": loss / 2}


def test_a_chain_shared_by_a_quantized_child_and_a_parents_prefix_is_drawn_once() -> None:
    r1, r2 = _distill(2.0), _distill(1.5)
    variants = {
        "reference": {},
        "pruned-r1": {"compression": [{"step": "prune"}, r1]},
        "pruned-r2": {"compression": [{"step": "prune"}, r1, {"step": "prune"}, r2]},
        "pruned-r2-int8": {"compression": [{"step": "prune"}, r1, {"step": "prune"}, r2, {"step": "quantize"}]},
    }
    data = finetune_data(variants)
    assert list(data) == ["pruned-r2, pruned-r2-int8 (and pruned-r1)"]
    [rounds] = data.values()
    assert [r["final_loss"] for r in rounds] == [2.0, 1.5] and [r["round"] for r in rounds] == [1, 2]


def test_two_independent_chains_are_both_kept() -> None:
    data = finetune_data({"a": {"compression": [_distill(1.0)]}, "b": {"compression": [_distill(3.0)]}})
    assert set(data) == {"a", "b"}
