import pytest
import torch

from heads.head import DetectionHead, HeadArchitecture
from shared.backbone import count_parameters
from shared.contract import FeatureSpec, check_features, check_specs, contract_from_dict, contract_to_dict
from shared.errors import ContractError, InputError
from shared.trunk import TRUNK_SIZES, TrunkConfig, build_trunk


@pytest.mark.parametrize("size", sorted(TRUNK_SIZES))
@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
def test_every_trunk_size_satisfies_the_contract(size, hw):
    trunk = build_trunk(size).eval()
    images = torch.randint(0, 256, (2, 3, *hw), dtype=torch.uint8)
    with torch.no_grad():
        feats = trunk(images)
    check_features(feats, trunk.feature_specs, hw)
    assert [s.stride for s in trunk.feature_specs] == [8, 16, 32]
    assert all(feats[s.name].dtype == torch.float32 for s in trunk.feature_specs)


def test_student_and_teacher_sizes():
    student = count_parameters(build_trunk("student"))
    teacher = count_parameters(build_trunk("teacher"))
    assert 1_000_000 <= student <= 3_000_000
    assert teacher >= 3 * student


def test_contract_violations_are_named():
    specs = (FeatureSpec("p3", 8, 8), FeatureSpec("p4", 8, 16))
    with pytest.raises(ContractError, match="p4"):
        check_features({"p3": torch.zeros(1, 8, 8, 8), "p4": torch.zeros(1, 4, 4, 4)}, specs, (64, 64))
    with pytest.raises(ContractError, match="lacks"):
        check_features({"p3": torch.zeros(1, 8, 8, 8)}, specs, (64, 64))
    with pytest.raises(ContractError, match="increase"):
        check_specs((FeatureSpec("a", 8, 16), FeatureSpec("b", 8, 8)))


def test_contract_round_trips_through_json():
    specs = build_trunk("nano").feature_specs
    assert contract_from_dict(contract_to_dict(specs)) == specs


def test_trunk_config_round_trips_and_rebuilds_identically():
    cfg = TRUNK_SIZES["nano"]
    assert TrunkConfig.from_dict(cfg.to_dict()) == cfg


def test_trunk_rejects_wrong_shaped_input():
    with pytest.raises(InputError, match="uint8"):
        build_trunk("nano")(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("size", sorted(TRUNK_SIZES))
def test_head_is_built_from_any_contract(size):
    trunk = build_trunk(size).eval()
    head = DetectionHead(trunk.feature_specs, HeadArchitecture(3)).eval()
    with torch.no_grad():
        out = head(trunk(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)))
    anchors = sum((64 // s.stride) ** 2 for s in trunk.feature_specs)
    assert out.logits.shape == (1, anchors, 3)
    assert out.distances.shape == (1, anchors, 4) and bool((out.distances >= 0).all())
