import torch

from shared.trunk import Trunk, TrunkConfig, build_trunk
from transfer.compression.prune import (
    PruneSettings,
    count_flops,
    distill_finetune,
    feature_error,
    hidden_widths,
    load_trunk,
    prune_trunk,
    save_trunk,
    trunk_features,
)


def _images(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_pruning_changes_only_hidden_widths_and_keeps_the_contract():
    torch.manual_seed(0)
    trunk = build_trunk("nano").eval()
    pruned = prune_trunk(trunk, PruneSettings(ratio=0.5, round_to=4))
    before, after = hidden_widths(trunk), hidden_widths(pruned)
    assert sum(after) < sum(before)
    assert after[0] == before[0]  # the first block has no expand conv: its hidden width is its input
    assert all(a <= b for a, b in zip(after, before))
    assert pruned.cfg.backbone.block_io() == trunk.cfg.backbone.block_io()  # block interfaces untouched
    assert pruned.cfg.backbone.hidden == after
    for a, b in zip(pruned.neck.state_dict().values(), trunk.neck.state_dict().values()):
        assert a.shape == b.shape
    images = _images()
    feats = pruned(images)
    for spec in trunk.feature_specs:
        assert feats[spec.name].shape == (8, spec.channels, 64 // spec.stride, 64 // spec.stride)
    assert count_flops(pruned, 64) < count_flops(trunk, 64)


def test_pruned_trunk_rebuilds_from_its_config_and_state_dict(tmp_path):
    trunk = prune_trunk(build_trunk("nano").eval(), PruneSettings(ratio=0.4, round_to=4))
    rebuilt = Trunk(TrunkConfig.from_dict(trunk.cfg.to_dict())).eval()
    rebuilt.load_state_dict(trunk.state_dict())  # strict
    save_trunk(tmp_path / "p.pt", trunk, {"parent": "reference"})
    loaded, state = load_trunk(tmp_path / "p.pt")
    assert state["parent"] == "reference" and loaded.cfg == trunk.cfg
    images = _images(2)
    with torch.no_grad():
        for name, t in trunk(images).items():
            assert torch.equal(t, rebuilt(images)[name]) and torch.equal(t, loaded(images)[name])


def _calibrated_nano(images):
    """A nano trunk whose BN running statistics match ``images`` (fresh BN stats make eval features ~0)."""
    trunk = build_trunk("nano").train()
    with torch.no_grad():
        for _ in range(20):
            trunk(images)
    return trunk.eval()


def test_distillation_fine_tune_pulls_pruned_features_towards_the_reference():
    torch.manual_seed(0)
    images = _images(32)
    reference = _calibrated_nano(images)
    target = trunk_features(reference, images)
    pruned = prune_trunk(reference, PruneSettings(ratio=0.6, round_to=4))
    before = feature_error(pruned, target, images)
    losses = distill_finetune(pruned, images, target, PruneSettings(steps=25, batch_size=16, lr=3e-3))
    assert len(losses) == 25 and not pruned.training
    assert feature_error(pruned, target, images) < 0.8 * before


def test_response_distillation_pulls_frozen_heads_outputs_towards_the_reference():
    from heads.head import DetectionHead, HeadArchitecture
    from transfer.training.distillation import response_distillation

    torch.manual_seed(0)
    images = _images(32)
    reference = _calibrated_nano(images)
    head = DetectionHead(reference.feature_specs, HeadArchitecture(2, width=16)).eval().requires_grad_(False)
    head_state = {k: v.clone() for k, v in head.state_dict().items()}
    target = trunk_features(reference, images)
    pruned = prune_trunk(reference, PruneSettings(ratio=0.6, round_to=4))

    def response_gap() -> float:
        with torch.no_grad():
            return float(response_distillation(head(pruned.eval()(images)), head(target)))

    before = response_gap()
    settings = PruneSettings(steps=25, batch_size=16, lr=3e-3, response_weight=1.0)
    losses = distill_finetune(pruned, images, target, settings, heads=(head,))
    assert len(losses) == 25 and response_gap() < before
    assert all(torch.equal(v, head_state[k]) for k, v in head.state_dict().items())  # the head stays frozen
