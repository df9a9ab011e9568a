"""`polyhead predict`'s command line: its defaults, and the option errors it gives before any connection."""

from __future__ import annotations

import pytest

from serving.cli.main import build_parser
from serving.cli.main import main as cli_main


def test_predict_parses_with_its_defaults():
    args = build_parser().parse_args(["predict", "photos/"])
    assert args.func.__module__ == "serving.cli.predict_command"
    assert (args.source, args.server, args.tasks, args.conf, args.save, args.json, args.concurrency) == (
        "photos/", "127.0.0.1:8001", None, 0.25, None, None, 4)


@pytest.mark.parametrize(("argv", "message"), [
    (["--conf", "1.5"], "conf=1.5 is outside [0, 1]"),
    (["--conf", "-0.1"], "conf=-0.1 is outside [0, 1]"),
    (["--concurrency", "0"], "concurrency=0 must be at least 1"),
])  # fmt: skip
def test_a_bad_option_fails_with_exit_2_naming_the_value(tmp_path, capsys, argv, message):
    (tmp_path / "a.png").write_bytes(b"x")
    # no server listens on port 9: the options are checked before any connection
    assert cli_main(["predict", "--server", "127.0.0.1:9", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_source_with_no_image_fails_with_exit_2(tmp_path, capsys):
    assert cli_main(["predict", "--server", "127.0.0.1:9", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
