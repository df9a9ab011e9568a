"""Pruning works on the ``mobilenet_v2`` trunk (its blocks are shared.blocks.InvertedResidual)."""

import torch

import shared.pretrained_trunk as pt
from shared.contract import check_features
from shared.errors import ArtifactError
from shared.trunk import MOBILENET_V2_BACKBONE, Trunk, TrunkConfig, build_trunk
from transfer.compression.prune import PruneSettings, count_flops, hidden_widths, load_trunk, prune_trunk, save_trunk


def _trunk() -> Trunk:
    """The ImageNet-initialised trunk when the weights are installed, else the same architecture at random."""
    try:
        pt.imagenet_weights_path()
    except ArtifactError:
        torch.manual_seed(0)
        trunk = Trunk(TrunkConfig(MOBILENET_V2_BACKBONE, 64))
        for m in trunk.modules():  # distinct BN scales so the ranking is not a tie
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.1, 1.0)
        return trunk.eval()
    return build_trunk("mobilenet_v2").eval()


def test_one_pruning_round_keeps_the_contract_and_needs_no_weights_file(monkeypatch, tmp_path):
    trunk = _trunk()

    def absent():
        raise ArtifactError("not installed")

    monkeypatch.setattr(pt, "find_packaged_weights", absent)  # pruning rebuilds from data, never from the file
    pruned = prune_trunk(trunk, PruneSettings(ratio=0.25, round_to=8))
    before, after = hidden_widths(trunk), hidden_widths(pruned)
    assert before == MOBILENET_V2_BACKBONE.default_hidden() and after[0] == before[0] == 32  # block 0: no expand
    assert all(a < b for a, b in zip(after[1:], before[1:])) and all(h % 8 == 0 for h in after[1:])
    assert pruned.cfg.backbone.block_io() == trunk.cfg.backbone.block_io()
    assert pruned.cfg.backbone.hidden == after and pruned.cfg.pretrained is None
    assert count_flops(pruned, 96) < 0.85 * count_flops(trunk, 96)
    for size in (64, 96):
        with torch.no_grad():
            check_features(pruned(torch.zeros(1, 3, size, size, dtype=torch.uint8)), trunk.feature_specs, (size, size))
    save_trunk(tmp_path / "pruned.pt", pruned)
    loaded, _ = load_trunk(tmp_path / "pruned.pt")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, t in pruned(images).items():
            assert torch.equal(t, loaded(images)[name])


def test_pruned_weights_are_the_kept_channels_of_the_reference():
    trunk = _trunk()
    pruned = prune_trunk(trunk, PruneSettings(ratio=0.5, round_to=8))
    ref, got = trunk.backbone.blocks[3].conv[2][0].weight, pruned.backbone.blocks[3].conv[2][0].weight
    assert got.shape[1] < ref.shape[1] and got.shape[0] == ref.shape[0]  # project conv: fewer inputs, same outputs
    kept = [j for j in range(ref.shape[1]) if any(torch.equal(ref[:, j], got[:, i]) for i in range(got.shape[1]))]
    assert len(kept) == got.shape[1]  # every surviving column is a column of the reference
