"""The serving benchmark's baselines answer what the shared trunk answers (a real Triton serves them)."""

import numpy as np
import pytest
from tritonclient import grpc as grpcclient

from serving.bench.baselines import INPROCESS_MODEL, independent_repository, inprocess_repository
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_names import HEAD_OUTPUTS
from shared.artifacts import read_json
from shared.workspace import Workspace


@pytest.mark.triton
def test_inprocess_baseline_answers_every_task_as_the_separate_models_do(workspace, tmp_path):
    ws = Workspace.at(workspace)
    tasks = ws.tasks()[:2]
    repo = tmp_path / "repo"
    models = independent_repository(ws, repo, tasks, "ref")
    assert inprocess_repository(ws, repo, tasks, "ref") == INPROCESS_MODEL
    size = int(read_json(ws.variant("ref") / "variant.json")["input_size"])
    image = np.random.default_rng(3).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        client = grpcclient.InferenceServerClient(server.url)
        inp = grpcclient.InferInput("images", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        together = client.infer(INPROCESS_MODEL, [inp])
        for task, model in zip(tasks, models, strict=True):
            alone = client.infer(model, [inp])
            for name in HEAD_OUTPUTS:
                ours, theirs = together.as_numpy(f"{task}_{name}"), alone.as_numpy(name)
                if ours.dtype.kind == "f":
                    np.testing.assert_allclose(ours, theirs, atol=1e-5)
                else:
                    np.testing.assert_array_equal(ours, theirs)
        # one backend process hosts every detector: the stub count does not grow with N
        config = client.get_model_config(INPROCESS_MODEL).config
        assert sorted(read_json_param(config, "heads")) == sorted(tasks)


def read_json_param(config, name):  # noqa: ANN001, ANN201 (protobuf)
    import json

    return json.loads(config.parameters[name].string_value)
