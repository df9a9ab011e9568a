"""`polyhead bench robustness` end to end: the table, the JSON, variant.json, and errors naming the choices."""

import json

import pytest

from serving.cli.main import build_parser, main
from tests.transfer.evaluation.robustness_workspace import build_robustness_workspace


def test_bench_robustness_parses_with_its_defaults():
    args = build_parser().parse_args(["bench", "robustness", "--workdir", "w"])
    assert args.func.__name__ == "_cmd_bench_robustness"
    assert (args.max_images, args.seed, args.variants, args.tasks, args.corruptions, args.json) == (
        100, 0, None, None, None, None)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_robustness_workspace(tmp_path_factory.mktemp("bench-robust"))


def test_bench_robustness_prints_a_table_and_writes_json_and_variant_json(work, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["bench", "robustness", "--workdir", str(work), "--json", str(out), "--max-images", "2",
            "--corruptions", "contrast,jpeg", "--variants", "reference", "--tasks", "photos"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["variant", "admit", "clean", "mPC", "rPC", "drop", "jpeg", "contrast"]
    result = json.loads(out.read_text())
    row = result["variants"]["reference"]
    assert lines[2].split()[:6] == ["reference", "yes", f"{row['clean_map']:.4f}", f"{row['mpc']:.4f}",
                                    f"{row['rpc']:.3f}", "+0.00"]
    assert set(row) >= {"clean_map", "mpc", "rpc", "per_corruption"}
    assert set(row["per_corruption"]) == {"jpeg", "contrast"}
    assert (result["max_images"], result["tasks"], result["corruptions"]) == (2, ["photos"], ["jpeg", "contrast"])
    recorded = json.loads((work / "trunk/reference/variant.json").read_text())["robustness"]
    assert recorded["mpc"] == row["mpc"] and recorded["per_task"]["photos"]["images"] == 2


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--variants", "reference,int4", "unknown variant 'int4'; choose from reference"),
    ("--tasks", "signs", "unknown task 'signs'; choose from photos"),
    ("--corruptions", "jpeg,fog", "unknown corruption 'fog'; choose from gaussian_noise, gaussian_blur, jpeg, "
                                  "brightness, contrast"),
])
def test_an_unknown_name_exits_2_naming_the_choices(work, capsys, flag, value, message):
    assert main(["bench", "robustness", "--workdir", str(work), flag, value]) == 2
    assert message in capsys.readouterr().err
