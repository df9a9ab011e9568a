"""The supernet: every sub-network keeps the contract, the largest is the trunk, exports are plain and equal."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from shared.contract import check_features
from shared.errors import ConfigError
from shared.trunk import TRUNK_SIZES, Trunk
from transfer.elastic.recalibrate import recalibrate_bn
from transfer.elastic.space import ElasticSpace, SubnetArch
from transfer.elastic.supernet import ElasticTrunk, sort_channels
from transfer.export.onnx_graphs import export_trunk, session

SIZE = 64


def _trunk(name: str) -> Trunk:
    torch.manual_seed(0)
    trunk = Trunk(replace(TRUNK_SIZES[name], pretrained=None)).eval()
    with torch.no_grad():  # non-trivial BatchNorms, so sorting and slicing are really exercised
        for m in trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 2.0)
    return trunk


@pytest.fixture(scope="module")
def nano() -> tuple[Trunk, ElasticTrunk]:
    trunk = _trunk("nano")
    return trunk, ElasticTrunk(sort_channels(trunk), ElasticSpace(trunk.cfg, (0.5, 1.0))).eval()


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["nano", "mobilenet_v2"])
def test_largest_subnetwork_equals_the_trunk_before_training(name: str) -> None:
    trunk = _trunk(name)
    supernet = ElasticTrunk(sort_channels(trunk), ElasticSpace(trunk.cfg)).eval()
    x = _images()
    with torch.no_grad():
        ref, got = trunk(x), supernet(x, supernet.space.largest())
        extracted = supernet.extract(supernet.space.largest())(x)
    for k in ref:
        assert torch.allclose(ref[k], got[k], atol=1e-4), k
        assert torch.allclose(ref[k], extracted[k], atol=1e-4), k


def test_every_subnetwork_keeps_the_contract_and_its_export_equals_the_slice(nano) -> None:
    trunk, supernet = nano
    space = supernet.space
    archs = list(space.enumerate())
    assert len(archs) == space.size() == 32  # 5 elastic blocks x 2 widths
    x = _images()
    full = sum(p.numel() for p in trunk.parameters())
    for arch in archs:
        with torch.no_grad():
            sliced = supernet(x, arch)
            sub = supernet.extract(arch)
            plain = sub(x)
        check_features(sliced, trunk.feature_specs, (SIZE, SIZE))
        check_features(plain, trunk.feature_specs, (SIZE, SIZE))
        assert all(torch.allclose(sliced[k], plain[k], atol=1e-5) for k in plain)
        if arch != space.largest():
            assert sum(p.numel() for p in sub.parameters()) < full  # physically smaller, not masked


def test_mobilenet_v2_depth_choices_drop_trailing_blocks_and_keep_the_contract() -> None:
    trunk = _trunk("mobilenet_v2")
    space = ElasticSpace(trunk.cfg)
    assert space.depth_choices() == [(1,), (1, 2), (2, 3), (2, 3, 4), (2, 3), (2, 3), (1,)]
    supernet = ElasticTrunk(sort_channels(trunk), space).eval()
    smallest = space.smallest()
    sub = supernet.extract(smallest)
    assert len(sub.backbone.blocks) == sum(smallest.depths) == 11 < len(trunk.backbone.blocks)
    with torch.no_grad():
        check_features(sub(_images(1)), trunk.feature_specs, (SIZE, SIZE))


def test_a_subnetwork_exports_to_onnx_with_parity_against_torch(nano, tmp_path) -> None:
    _, supernet = nano
    arch = supernet.space.sample(random.Random(3))
    sub = supernet.extract(arch)
    x = _images(3, seed=1)
    export_trunk(sub, tmp_path / "model.onnx", SIZE, x)
    sess = session(tmp_path / "model.onnx")
    got = sess.run(["p3", "p4", "p5"], {"images": x.numpy()})
    with torch.no_grad():
        ref = supernet(x, arch)
    for name, g in zip(["p3", "p4", "p5"], got):
        assert g.shape == tuple(ref[name].shape)
        np.testing.assert_allclose(g, ref[name].numpy(), atol=1e-4)
    hidden = [int(list(b.conv)[-2][0].out_channels) for b in sub.backbone.blocks]
    assert hidden == [supernet.space.hidden_of(i, arch.widths[i]) for i in supernet.space.active_blocks(arch)]


def test_bn_recalibration_changes_the_running_statistics(nano) -> None:
    _, supernet = nano
    sub = supernet.extract(supernet.space.smallest())
    before = [m.running_mean.clone() for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    recalibrate_bn(sub, _images(8, seed=2), batch_size=4)
    after = [m.running_mean for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    changed = sum(not torch.allclose(a, b) for a, b in zip(before, after))
    assert changed == len(before)
    assert not sub.training
    assert all(m.momentum == 0.1 for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_unknown_architectures_name_the_choices(nano) -> None:
    space = nano[1].space
    with pytest.raises(ConfigError, match="largest"):
        space.parse("biggest")
    bad = SubnetArch(space.largest().depths, (1.0, 0.3, 1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"block 1 width 0.3 is not a choice; choose one of \[0.5, 1.0\]"):
        space.validate(bad)
    with pytest.raises(ConfigError, match="stage 0 depth 2"):
        space.validate(SubnetArch((2, 1, 1, 1, 1, 1), space.largest().widths))
    assert space.parse('{"depths": [1,1,1,1,1,1], "widths": [1,0.5,1,1,1,1]}').widths[1] == 0.5
