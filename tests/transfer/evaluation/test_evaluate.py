"""evaluate_task's argument checks (the server paths are tested through a real Triton in
tests/serving/triton/test_map_through_triton.py)."""

import pytest

from shared.errors import ConfigError
from transfer.evaluate import evaluate_task


def test_a_detector_and_connect_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="both a detector and connect"):
        evaluate_task(tmp_path, "signs", None, detector=object(), connect=object)


def test_zero_workers_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="workers=0"):
        evaluate_task(tmp_path, "signs", None, connect=object, workers=0)
