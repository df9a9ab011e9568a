"""The one task-name rule (shared.task_names) and the places that apply it."""

from __future__ import annotations

import re

import pytest

from serving.triton.workspace_artifacts import read_head
from shared.errors import ArtifactError, ConfigError
from shared.task_names import TASK_NAME_PATTERN, TASK_NAME_RE, check_task_name, is_task_name
from shared.workspace import Workspace
from transfer import add_task
from transfer.config import DataConfig
from transfer.data.synth import TASKS

VALID = ["a", "signs", "x1", "a_b", "new_task_2", "a" * 32, "a_"]
INVALID = ["1x", "", "A", "Signs", "a-b", "a b", "_a", "a" * 33, "a" * 63, "a\n", "é", "detect/x"]


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass(name: str) -> None:
    assert check_task_name(name) == name and is_task_name(name)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_raise_config_error_naming_the_name_and_the_rule(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_task_name(name)
    assert repr(name) in str(err.value) and TASK_NAME_PATTERN in str(err.value)
    assert "1-32 characters" in str(err.value)


@pytest.mark.parametrize("name", [None, 3, b"abc"])
def test_non_strings_are_invalid(name: object) -> None:
    assert not is_task_name(name)
    with pytest.raises(ConfigError):
        check_task_name(name)


def test_the_error_class_can_be_chosen() -> None:
    with pytest.raises(ArtifactError, match="'1x'"):
        check_task_name("1x", ArtifactError)


def test_pattern_embeds_without_anchors() -> None:
    assert not TASK_NAME_PATTERN.startswith("^") and not TASK_NAME_PATTERN.endswith("$")
    model = re.compile(rf"(?:head|detect)_{TASK_NAME_PATTERN}")
    assert model.fullmatch("detect_signs") and not model.fullmatch("detect_1x")
    assert TASK_NAME_RE.pattern == TASK_NAME_PATTERN


def test_project_task_names_follow_the_rule() -> None:
    """Synthetic tasks, the default config's tasks and test fixtures' tasks are all valid."""
    from tests import fake_workspace

    names = [*TASKS, *DataConfig().tasks, *fake_workspace.TASKS]
    assert all(is_task_name(n) for n in names), names


@pytest.mark.parametrize("name", VALID + INVALID)
def test_serving_and_add_task_agree(name: str, tmp_path) -> None:
    """A name add-task refuses, serving refuses too (and the reverse): one rule."""
    ws = Workspace.at(tmp_path)
    try:
        add_task.check_task_name(ws, name)
        add_task_ok = True
    except ConfigError as err:
        assert "is invalid" in str(err)
        add_task_ok = False
    with pytest.raises(ArtifactError) as err:  # no head on disk: a valid name fails later, on the file
        read_head(tmp_path, name)
    serving_ok = "is invalid" not in str(err.value)
    assert add_task_ok == serving_ok == (name in VALID)
