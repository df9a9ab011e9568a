"""`polyhead measure` end to end on real ONNX trunks, and `polyhead optimize --serving-device`."""

import json

from serving.cli.compress_commands import format_catalogue
from serving.cli.main import build_parser, main
from serving.cli.monitor_commands import _optimize_options
from transfer.compression.catalogue import build_catalogue
from transfer.export.device_keys import cpu_key


def test_measure_parses_with_its_defaults():
    args = build_parser().parse_args(["measure"])
    assert args.func.__module__ == "serving.cli.measure_command"
    assert (args.device, args.repeats) == ("auto", 30)


def test_measure_prints_each_variant_and_the_devices_pareto_set(workspace, fakes, capsys):
    fakes.add_variant_metrics(workspace)
    assert main(["measure", "--workdir", str(workspace), "--device", "cpu", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    key = cpu_key()
    assert "timing 3 variants on " + key in out and f"latency on {key}" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["ref"], ["small"])}
    assert set(rows) == {"ref", "small"} and rows["ref"].rstrip().endswith("*")  # most accurate: on the front
    meta = json.loads((workspace / "trunk/ref/variant.json").read_text())
    assert set(meta["latency_ms"]) == {"cpu-test", key} and meta["pareto_by_device"][key] is True


def _optimize(argv, tmp_path, yaml_text=""):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text or "{}\n")
    args = build_parser().parse_args(["optimize", "--prometheus", "http://p:9090", "--server", "t:8001",
                                      "--config", str(cfg), *argv])
    return _optimize_options(args)["serving_device"]


def test_optimize_takes_the_serving_device_from_the_flag_the_yaml_or_auto(tmp_path):
    assert _optimize([], tmp_path) == "auto"
    assert _optimize(["--serving-device", "cuda-nvidia-h200"], tmp_path) == "cuda-nvidia-h200"
    assert _optimize(["--device", "cpu-x86_64-2t"], tmp_path) == "cpu-x86_64-2t"  # the older flag
    assert _optimize([], tmp_path, "serving_device: cuda-x\n") == "cuda-x"
    assert _optimize([], tmp_path, "device: cuda-y\n") == "cuda-y"  # the older YAML key
    assert _optimize(["--serving-device", "cuda-z"], tmp_path, "serving_device: cuda-x\n") == "cuda-z"


def test_the_catalogue_table_lists_other_devices_pareto_sets():
    meta = {"size_bytes": 1000, "sha256": "x", "map": {"signs": {"map": 0.5}},
            "latency_ms": {"cpu-a-2t": {"b1": 1.0, "b8": 8.0}, "cuda-x": {"b1": 0.5, "b8": 2.0}}}
    lines = format_catalogue(build_catalogue({"reference": meta}, "reference", 1.0, "cpu-a-2t", ["signs"]))
    assert "Pareto set on cuda-x: reference" in lines and "latency on cpu-a-2t" in lines[-2]
