"""The ``polyhead`` parser: every command and subcommand is there, routed to its group, with its defaults."""

from __future__ import annotations

import pytest

from serving.cli.main import build_parser
from shared.workspace import DEFAULT_WORKDIR

COMMANDS = ("demo", "data", "train", "eval", "bench", "add-task", "export", "serve", "infer", "predict", "compress",
            "measure", "monitor", "optimize", "report", "search", "variant")  # fmt: skip
#: argv -> (module of the command's function, attributes the parse must have).
CASES = {
    ("demo",): ("demo_command", {"command": "demo", "fast": False, "workdir": DEFAULT_WORKDIR}),
    ("predict", "x.jpg"): ("predict_command", {
        "command": "predict", "source": "x.jpg", "server": "127.0.0.1:8001", "tasks": None, "conf": 0.25,
        "save": None, "json": None, "concurrency": 4, "variant": None,
    }),
    ("measure",): ("measure_command", {"command": "measure", "device": "auto", "repeats": 30}),
    ("report",): ("report_command", {"command": "report", "workdir": DEFAULT_WORKDIR, "out": None}),
    ("search",): ("search_command", {
        "command": "search", "device": "auto", "budget_ms": [], "population": 12, "generations": 2, "steps": 240,
        "calibration_images": 400, "keep": 8, "lr": 5e-5, "width_choices": (0.75, 1.0), "max_drop": 1,
    }),
    ("variant", "show"): ("variant_command", {"command": "variant", "verb": "show", "repository": None}),
    ("bench", "search"): ("bench_commands", {
        "command": "bench", "bench_command": "search", "repeats": 60, "rounds": 6, "serving": False,
    }),
    ("bench", "robustness"): ("bench_commands", {
        "command": "bench", "bench_command": "robustness", "variants": None, "corruptions": None, "max_images": 100,
    }),
    ("bench", "variants"): ("bench_variants_command", {
        "command": "bench", "bench_command": "variants", "variants": None, "switch_seconds": 20.0,
    }),
    ("data", "synth", "--out", "d"): ("data_commands", {
        "command": "data", "data_command": "synth", "out": "d", "seed": 0, "num_train": 600, "num_val": 150,
        "num_unlabeled": 0, "image_size": 256,
    }),
    ("data", "photos", "--out", "d"): ("data_commands", {
        "command": "data", "data_command": "photos", "out": "d", "task": "photos", "num_train": 400,
        "num_val": 100, "image_size": 320,
    }),
    ("train",): ("training_commands", {"command": "train", "config": None, "teacher": None, "restart": False,
                                   "device": "auto", "nproc": 1}),
    ("eval", "--task", "cars", "--val-json", "v.json", "--images", "img"): ("training_commands", {
        "command": "eval", "task": "cars", "variant": "reference", "server": None, "json": None,
    }),
    ("compress",): ("compress_commands", {"command": "compress", "tolerance": 1.0, "rounds": 2, "device": "auto"}),
    ("add-task", "--name", "shapes", "--train-json", "t.json", "--val-json", "v.json", "--images", "img"): (
        "serving_commands", {"command": "add-task", "name": "shapes", "epochs": 14, "views": 4, "server": None,
                             "device": "auto"}),
    ("export",): ("serving_commands", {
        "command": "export", "backend": "python", "dynamic_batching": False, "tensorrt": False,
        "max_batch_size": 8, "heads_layout": None,
    }),
    ("serve",): ("serving_commands", {
        "command": "serve", "host": "127.0.0.1", "grpc_port": 8001, "http_port": 8000, "metrics_port": 8002,
        "heads_layout": "in_trunk",
    }),
    ("infer", "--image", "x.jpg"): ("serving_commands", {
        "command": "infer", "server": "127.0.0.1:8001", "image": "x.jpg", "tasks": None, "timeout": 10.0,
    }),
    ("monitor",): ("monitor_commands", {
        "command": "monitor", "triton_metrics": "http://127.0.0.1:8002/metrics", "metrics_port": 9100,
        "address": "0.0.0.0", "interval": 1.0, "slo": [],
    }),
    ("optimize",): ("monitor_commands", {
        "command": "optimize", "config": None, "prometheus": None, "slo": [], "batch_delays_us": None,
        "dry_run": False, "once": False, "address": "0.0.0.0",
    }),
    ("bench", "serving"): ("bench_commands", {
        "command": "bench", "bench_command": "serving", "tasks": "1,4,8,16,32", "concurrency": "2,4,8",
        "seconds": 10.0, "blocks": 3, "batching_concurrency": 8, "heads_layout": "in_trunk",
    }),
    ("bench", "compress"): ("bench_commands", {
        "command": "bench", "bench_command": "compress", "variant": None, "distill_report": None,
    }),
    ("bench", "controller"): ("bench_commands", {
        "command": "bench", "bench_command": "controller", "duration": 60.0, "clients": 4, "base_clients": 1,
        "warmup": 15.0, "after": 90.0, "window": "1m", "interval": 2.0, "cooldown": 60.0, "task": [],
    }),
}  # fmt: skip


def test_every_command_is_covered_here():
    assert {argv[0] for argv in CASES} == set(COMMANDS)


@pytest.mark.parametrize("argv", list(CASES), ids=" ".join)
def test_each_command_parses_to_its_group_with_its_defaults(argv):
    module, expected = CASES[argv]
    args = build_parser().parse_args(list(argv))
    assert args.func.__module__ == f"serving.cli.{module}"
    assert {key: getattr(args, key) for key in expected} == expected


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_command_exits_with_argparse_error_listing_every_command(capsys):
    err = _error(capsys, ["bogus"])
    assert "polyhead: error: argument command: invalid choice: 'bogus'" in err
    assert err.index("(choose from") < min(err.index(f"'{c}'") for c in COMMANDS)
    assert [c for c in COMMANDS if f"'{c}'" in err] == list(COMMANDS)


@pytest.mark.parametrize(("group", "subcommands"), [("bench", ("serving", "compress", "controller", "robustness",
                                                              "variants", "search")),
                                                    ("data", ("synth", "photos"))])
def test_groups_need_a_known_subcommand(capsys, group, subcommands):
    assert "required: " in _error(capsys, [group])
    err = _error(capsys, [group, "bogus"])
    assert f"polyhead {group}: error: argument {group}_command: invalid choice: 'bogus'" in err
    assert all(f"'{s}'" in err for s in subcommands)


def test_no_command_is_an_error(capsys):
    assert "the following arguments are required: command" in _error(capsys, [])


def test_search_defaults_are_the_settings_defaults_and_bad_widths_are_named(capsys):
    from transfer.elastic.elastic_search import ElasticSettings

    args, want = build_parser().parse_args(["search"]), ElasticSettings()
    assert (args.steps, args.lr, args.batch_size) == (want.sandwich.steps, want.sandwich.lr, want.sandwich.batch_size)
    assert (args.width_choices, args.max_drop, args.calibration_images, args.train_images, args.max_images,
            args.keep, args.latency_samples) == (want.width_choices, want.max_drop, want.calibration_images,
                                                 want.train_images, want.max_images, want.keep, want.latency_samples)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--width-choices", "half,1"])
    assert "'half,1': expected fractions like 0.5,0.75,1" in capsys.readouterr().err
