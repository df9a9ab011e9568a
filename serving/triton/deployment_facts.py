"""What the code serves, as constants the Kubernetes manifests must agree with.

``tests/k8s`` renders every overlay and checks its ports, probe paths, model names, repository
paths and metric names against these constants, and these constants against the code that
actually serves (``EmbeddedTriton``'s defaults, the repository builder, a real Triton's metrics).
Change a port or a name here and in the code together; the tests say where the manifests drifted.
"""

from __future__ import annotations

from serving.triton.model_names import (  # noqa: F401 (re-exported: the manifests are checked against them)
    FANOUT_MODEL,
    MODEL_NAME_RE,
    SHARED_HEADS_MODEL,
    TRUNK_MODEL,
    head_model,
    task_model,
)
from shared.task_names import TASK_NAME_PATTERN  # noqa: F401 (re-exported)

#: Triton's listening ports (``EmbeddedTriton`` defaults; the NGC image's defaults too).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

#: Triton's HTTP health endpoints (KServe v2 protocol).
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"

#: Directory of the generated Triton repository inside ``--workdir`` (``Workspace.repository``).
REPOSITORY_DIRNAME = "model_repository"

#: Model names of the repository (``serving.triton.repository``): one trunk, one head (or one shared
#: ``heads`` model) and one single-task ensemble per task, and the fan-out ensemble over every task.
#: The rule is :mod:`serving.triton.model_names` (``TRUNK_MODEL``, ``FANOUT_MODEL``,
#: ``SHARED_HEADS_MODEL``, ``MODEL_NAME_RE``, imported above); task names follow
#: :data:`shared.task_names.TASK_NAME_PATTERN`. As format strings (``.format(task=...)``):
HEAD_MODEL = head_model("{task}")
TASK_MODEL = task_model("{task}")

#: Header carrying the model-control key when Triton restricts the ``model-repository`` protocol
#: (``--grpc-restricted-protocol`` / ``--http-restricted-api``), and the environment variable
#: the key is read from (filled from a Kubernetes Secret).
ADMIN_KEY_HEADER = "polyhead-admin-key"
ADMIN_KEY_ENV = "POLYHEAD_ADMIN_KEY"

#: Triton counters the prometheus-adapter rule (HPA metric) is computed from.
TRITON_QUEUE_METRIC = "nv_inference_queue_duration_us"
TRITON_SUCCESS_METRIC = "nv_inference_request_success"

#: Custom metric the HorizontalPodAutoscaler scales on (served by prometheus-adapter): mean
#: seconds a request waits in the trunk's queue, per pod.
HPA_METRIC = "polyhead_queue_time_per_request_seconds"
