"""Triton model configs for polyhead, built as ``model_config_pb2.ModelConfig`` messages.

``trunk``: ``images`` uint8 ``[3,S,S]`` -> ``p3,p4,p5``; ``head_<task>``: ``p3,p4,p5`` ->
``num_dets [1]``, ``boxes [K,4]``, ``scores [K]``, ``classes [K]``; ``detect_<task>``: ensemble
trunk -> head; ``detect``: ensemble with one trunk step feeding every head, outputs
``<task>_num_dets`` ... (each head needs its own ensemble output names). Dims exclude the batch
axis (``max_batch_size`` > 0).

With ``heads_layout="shared"`` the per-task ``head_<task>`` models are replaced by one ``heads``
model (``p3,p4,p5`` -> ``<task>_num_dets``, ... for every task) whose python backend runs only the
heads a request asks for: the ensembles map the outputs of their tasks, so ``detect_<task>`` runs
one head and ``detect`` all of them, in one backend process whatever the number of tasks.

With ``heads_layout="in_trunk"`` the ``trunk`` model itself also hosts every head: its config lists
``p3,p4,p5`` and ``<task>_<output>`` for every task, the ensembles are one step into ``trunk``
mapping their tasks' outputs, and the server runs one backend process in all. Its dynamic batcher
(always on, delay 0 unless set) hands the backend every queued request at once, and the backend
runs them side by side on ``request_workers`` threads (onnxruntime releases the GIL).

Every python-backend leaf names the onnxruntime execution providers it asks for
(:mod:`serving.triton.execution_providers`: CPU, or with ``device="cuda"`` TensorRT, CUDA, CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.triton.execution_providers import DEVICES, providers_parameters
from serving.triton.model_names import HEAD_OUTPUTS, SHARED_HEADS_MODEL, TRUNK_MODEL, head_model, head_output
from serving.triton.workspace_artifacts import HeadArtifact
from shared.artifacts import atomic_write_bytes
from shared.contract import FEATURE_STRIDES
from shared.errors import ArtifactError, ConfigError

HEADS_MODEL = SHARED_HEADS_MODEL  # the one model hosting every head (shared layout)
IN_TRUNK_HEADS_DIR = "heads"  # in_trunk layout: trunk/heads/<generation>/<task>.onnx
_BACKENDS = ("python", "onnxruntime")
HEADS_LAYOUTS = ("per_task", "shared", "in_trunk")
#: How the trunk's variants are served: one Triton version each (the controller reloads), or all at once.
VARIANT_MODES = ("versions", "per_request")
#: Layout-dependent defaults: onnxruntime intra-op threads of a trunk instance.
TRUNK_THREADS = {"per_task": 2, "shared": 2, "in_trunk": 1}


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository is generated (recorded in ``build.json`` so hot-adds match).

    Attributes:
        backend: ``"python"`` (one shared model.py running onnxruntime on ``device``; the
            embedded default) or ``"onnxruntime"`` (native backend of the NGC image, GPU instances).
        max_batch_size: Largest batch every model accepts.
        dynamic_batching: Enable Triton's dynamic batcher on trunk and heads (pays on GPUs;
            measured slower on the 2-core CPU).
        preferred_batch_sizes: Dynamic batcher's preferred sizes (empty: let Triton choose).
        max_queue_delay_us: Dynamic batcher's maximum wait for a fuller batch.
        trunk_instances: Instances of the trunk model.
        head_instances: Instances of each head model.
        trunk_threads: onnxruntime intra-op threads per trunk instance (0: the layout's default,
            :data:`TRUNK_THREADS`: 2, or 1 in ``in_trunk`` where requests run side by side).
        head_threads: onnxruntime intra-op threads per head instance.
        tensorrt: onnxruntime backend only: add the TensorRT execution accelerator.
        tensorrt_precision: ``"FP16"`` or ``"FP32"`` for the TensorRT accelerator (onnxruntime
            backend) or the TensorRT execution provider of fp32 graphs (python backend, ``cuda``).
        heads_layout: ``"per_task"`` (one ``head_<task>`` model per task: hot-adding loads only the
            new head) or ``"shared"`` (python backend only: one ``heads`` model hosting every head,
            one backend process whatever the number of tasks; hot-adding reloads ``heads``, never
            the trunk) or ``"in_trunk"`` (python backend only: the ``trunk`` model hosts every
            head, one backend process in all; hot-adding reloads ``trunk``, whose old process
            serves until the new one is ready). See ``docs/benchmarks.md`` for what each costs.
        request_workers: ``in_trunk`` only: requests one trunk instance runs side by side.
        device: python backend only: ``"cpu"`` (CPU instances, CPUExecutionProvider) or ``"cuda"``
            (``KIND_AUTO`` instances, TensorRT then CUDA then CPU execution providers, see
            :mod:`serving.triton.execution_providers`); the onnxruntime backend always uses the GPU.
        variants: ``"versions"`` (one Triton version per variant, one live; switching reloads
            ``trunk``) or ``"per_request"`` (``in_trunk`` only: the trunk holds every variant at
            once and takes the variant per request, see :mod:`serving.triton.per_request_variants`).
    """

    backend: str = "python"
    max_batch_size: int = 8  # images per request/execution
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    trunk_instances: int = 1
    head_instances: int = 1
    trunk_threads: int = 0  # 0: the layout's default (TRUNK_THREADS); heads 1, spinning off
    head_threads: int = 1
    tensorrt: bool = False
    tensorrt_precision: str = "FP16"
    heads_layout: str = "per_task"
    request_workers: int = 2
    device: str = "cpu"
    variants: str = "versions"

    def __post_init__(self) -> None:
        if self.heads_layout not in HEADS_LAYOUTS:
            raise ConfigError(f"heads_layout must be one of {HEADS_LAYOUTS}, got {self.heads_layout!r}")
        if self.trunk_threads == 0:
            object.__setattr__(self, "trunk_threads", TRUNK_THREADS[self.heads_layout])
        if self.backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(
                f"preferred_batch_sizes {self.preferred_batch_sizes} must lie in "
                f"[1, max_batch_size={self.max_batch_size}]"
            )
        if min(self.trunk_instances, self.head_instances, self.trunk_threads, self.head_threads,
               self.request_workers) < 1:
            raise ConfigError("instance, thread and request-worker counts must be >= 1")
        if self.tensorrt and self.backend != "onnxruntime":
            raise ConfigError(
                "tensorrt=True needs backend='onnxruntime' (the native backend's accelerator); the python "
                "backend asks for onnxruntime's TensorRT execution provider with device='cuda'"
            )
        if self.heads_layout != "per_task" and self.backend != "python":
            raise ConfigError(
                f"heads_layout={self.heads_layout!r} needs backend='python' (the native onnxruntime backend "
                "has no per-model process to share; keep one head_<task> model per task there)"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        self._check_variants()
        if self.tensorrt_precision not in ("FP16", "FP32"):
            raise ConfigError(f"tensorrt_precision must be FP16 or FP32, got {self.tensorrt_precision!r}")

    def _check_variants(self) -> None:
        if self.variants not in VARIANT_MODES:
            raise ConfigError(f"variants must be one of {VARIANT_MODES}, got {self.variants!r}")
        if self.variants == "per_request" and self.heads_layout != "in_trunk":
            raise ConfigError(f"variants='per_request' needs heads_layout='in_trunk' (the trunk model hosts the "
                              f"heads every variant feeds), got heads_layout={self.heads_layout!r}")


def _tensor(coll, name: str, dtype: int, dims: list[int]) -> None:  # noqa: ANN001 (protobuf repeated)
    t = coll.add()
    t.name, t.data_type = name, dtype
    t.dims.extend(dims)


def feature_dims(input_size: int, channels: dict[str, int]) -> dict[str, list[int]]:
    """Per-item dims ``[C, S/stride, S/stride]`` of each contract feature."""
    return {n: [channels[n], input_size // s, input_size // s] for n, s in FEATURE_STRIDES.items()}


def head_output_dims(max_dets: int) -> dict[str, tuple[int, list[int]]]:
    """``name -> (data_type, per-item dims)`` of a head's outputs, in :data:`HEAD_OUTPUTS` order."""
    dims = {
        "num_dets": (mc.TYPE_INT64, [1]),
        "boxes": (mc.TYPE_FP32, [max_dets, 4]),
        "scores": (mc.TYPE_FP32, [max_dets]),
        "classes": (mc.TYPE_INT64, [max_dets]),
    }
    return {name: dims[name] for name in HEAD_OUTPUTS}


def _leaf(name: str, opts: RepositoryOptions, instances: int, threads: int) -> mc.ModelConfig:
    """A leaf model config (python or onnxruntime backend) without inputs/outputs."""
    cfg = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    group = cfg.instance_group.add()
    group.count = instances
    if opts.backend == "python":
        cfg.backend = "python"
        # cuda: KIND_AUTO is KIND_GPU on every visible GPU, or KIND_CPU where there is none
        group.kind = mc.ModelInstanceGroup.KIND_AUTO if opts.device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
        cfg.parameters["intra_op_num_threads"].string_value = str(threads)
        for key, value in providers_parameters(opts.device, opts.tensorrt_precision).items():
            cfg.parameters[key].string_value = value
    else:
        cfg.platform = "onnxruntime_onnx"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        cfg.parameters["intra_op_thread_count"].string_value = str(threads)
        if opts.tensorrt:
            acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add()
            acc.name = "tensorrt"
            acc.parameters["precision_mode"] = opts.tensorrt_precision
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    if opts.dynamic_batching:
        cfg.dynamic_batching.preferred_batch_size.extend(opts.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    return cfg


def trunk_config(
    input_size: int,
    channels: dict[str, int],
    versions: dict[int, str],
    opts: RepositoryOptions,
    live_version: int | None = None,
    sha256: dict[int, str] | None = None,
    heads: list[HeadArtifact] | None = None,
    heads_generation: int = 1,
    precisions: dict[int, str] | None = None,
) -> mc.ModelConfig:
    """Config of ``trunk``: one version per admitted variant; ``live_version`` pins one (else latest).

    Args:
        input_size: Square input side.
        channels: Channels of ``p3``, ``p4``, ``p5``.
        versions: Version number -> variant name.
        opts: Repository options.
        live_version: Pin this version live (``None``: the latest).
        sha256: Version number -> sha256 of its ``model.onnx``; recorded as the JSON parameter
            ``sha256_by_version``, which the python backend checks when it loads a version.
        heads: ``in_trunk`` layout: the heads the trunk hosts (outputs ``<task>_<output>``, files
            in ``trunk/heads/<heads_generation>/``).
        heads_generation: ``in_trunk`` layout: the directory of the live head files.
        precisions: Version number -> precision of its ``model.onnx`` (``fp32``, ``fp16``, ``int8``):
            python backend on ``cuda``: the TensorRT options of that version's execution providers.
    """
    cfg = _leaf(TRUNK_MODEL, opts, opts.trunk_instances, opts.trunk_threads)
    _tensor(cfg.input, "images", mc.TYPE_UINT8, [3, input_size, input_size])
    for name, dims in feature_dims(input_size, channels).items():
        _tensor(cfg.output, name, mc.TYPE_FP32, dims)
    if opts.heads_layout == "in_trunk":
        if not heads:
            raise ArtifactError("the in_trunk layout's 'trunk' needs at least one head; add a task first")
        add_heads(cfg, heads)
        cfg.parameters["heads_dir"].string_value = f"{IN_TRUNK_HEADS_DIR}/{heads_generation}"
        cfg.parameters["request_workers"].string_value = str(opts.request_workers)
        if not opts.dynamic_batching:  # the batcher hands queued requests to the request workers
            cfg.dynamic_batching.SetInParent()
    if live_version is None:
        cfg.version_policy.latest.num_versions = 1
    else:
        cfg.version_policy.specific.versions.append(live_version)
    cfg.parameters["versions"].string_value = json.dumps({str(v): n for v, n in sorted(versions.items())})
    cfg.parameters["input_size"].string_value = str(input_size)
    if opts.backend == "python" and precisions:
        for key, value in providers_parameters(opts.device, opts.tensorrt_precision, precisions).items():
            cfg.parameters[key].string_value = value
    if sha256:
        cfg.parameters["sha256_by_version"].string_value = json.dumps({str(v): s for v, s in sorted(sha256.items())})
    return cfg


def head_config(head: HeadArtifact, channels: dict[str, int], opts: RepositoryOptions) -> mc.ModelConfig:
    """Config of ``head_<task>``; class names travel as the JSON string parameter ``classes``.

    The ``sha256`` parameter (of the head's ``model.onnx``) is checked by the python backend at load.
    """
    cfg = _leaf(head_model(head.task), opts, opts.head_instances, opts.head_threads)
    for name, dims in feature_dims(head.input_size, channels).items():
        _tensor(cfg.input, name, mc.TYPE_FP32, dims)
    for name, (dtype, dims) in head_output_dims(head.max_dets).items():
        _tensor(cfg.output, name, dtype, dims)
    cfg.version_policy.latest.num_versions = 1
    set_task_parameters(cfg, head)
    cfg.parameters["sha256"].string_value = head.sha256
    return cfg


def heads_config(heads: list[HeadArtifact], channels: dict[str, int], opts: RepositoryOptions) -> mc.ModelConfig:
    """Config of ``heads`` (shared layout): ``p3,p4,p5`` -> ``<task>_<output>`` for every head.

    The ``heads`` parameter (JSON task -> sha256) tells the python backend which ``<task>.onnx``
    files to load and what each must hash to; the latest version is live.

    Raises:
        ArtifactError: If ``heads`` is empty.
    """
    if not heads:
        raise ArtifactError("the shared 'heads' model needs at least one head; add a task first")
    cfg = _leaf(HEADS_MODEL, opts, opts.head_instances, opts.head_threads)
    for name, dims in feature_dims(heads[0].input_size, channels).items():
        _tensor(cfg.input, name, mc.TYPE_FP32, dims)
    add_heads(cfg, heads)
    cfg.version_policy.latest.num_versions = 1
    cfg.parameters["input_size"].string_value = str(heads[0].input_size)
    return cfg


def add_heads(cfg: mc.ModelConfig, heads: list[HeadArtifact]) -> None:
    """Outputs ``<task>_<output>`` of every head and the ``heads`` parameter (JSON task -> sha256)."""
    for head in sorted(heads, key=lambda h: h.task):
        for name, (dtype, dims) in head_output_dims(head.max_dets).items():
            _tensor(cfg.output, head_output(head.task, name), dtype, dims)
    cfg.parameters["heads"].string_value = json.dumps({h.task: h.sha256 for h in sorted(heads, key=lambda h: h.task)})


def heads_host(opts: RepositoryOptions) -> str | None:
    """The model hosting every head (``heads`` or ``trunk``), ``None`` for one ``head_<task>`` per task."""
    return {"shared": HEADS_MODEL, "in_trunk": TRUNK_MODEL}.get(opts.heads_layout)


def set_task_parameters(cfg: mc.ModelConfig, head: HeadArtifact) -> None:
    """Record ``head``'s task metadata as string parameters of ``cfg``.

    ``task``, ``classes`` (JSON), ``category_ids`` (JSON), ``max_dets`` and ``input_size``, on a
    ``head_<task>`` or ``detect_<task>`` config (clients read class names from the latter).
    """
    cfg.parameters["task"].string_value = head.task
    cfg.parameters["classes"].string_value = json.dumps(list(head.classes))
    cfg.parameters["category_ids"].string_value = json.dumps(list(head.category_ids))
    cfg.parameters["max_dets"].string_value = str(head.max_dets)
    cfg.parameters["input_size"].string_value = str(head.input_size)


def ensemble_config(
    name: str,
    input_size: int,
    heads: dict[str, int],
    max_batch_size: int,
    prefix_outputs: bool,
    host: str | None = None,
) -> mc.ModelConfig:
    """Ensemble ``images -> trunk -> head(s)`` for every task in ``heads`` (task -> max_dets).

    Args:
        name: Model name (``detect_<task>`` or ``detect``).
        input_size: Square input side.
        heads: Task name -> K of that head.
        max_batch_size: As the composing models.
        prefix_outputs: Name outputs ``<task>_<output>`` (fan-out) instead of ``<output>``.
        host: The model hosting every head (:func:`heads_host`): one step into it mapping only
            these tasks' outputs (``heads``: after the trunk step; ``trunk``: the only step),
            ``None``: one step per ``head_<task>``.
    """
    if not heads:
        raise ArtifactError(f"ensemble '{name}' needs at least one head; add a task first")
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    _tensor(cfg.input, "images", mc.TYPE_UINT8, [3, input_size, input_size])
    trunk = cfg.ensemble_scheduling.step.add()
    trunk.model_name, trunk.model_version = TRUNK_MODEL, -1
    trunk.input_map["images"] = "images"
    if host != TRUNK_MODEL:
        for feat in FEATURE_STRIDES:
            trunk.output_map[feat] = f"_{feat}"
    step = trunk if host == TRUNK_MODEL else None
    for task, max_dets in sorted(heads.items()):
        if step is None or host is None:
            step = cfg.ensemble_scheduling.step.add()
            step.model_name, step.model_version = host or head_model(task), -1
            for feat in FEATURE_STRIDES:
                step.input_map[feat] = f"_{feat}"
        for out, (dtype, dims) in head_output_dims(max_dets).items():
            ens_name = head_output(task, out) if prefix_outputs else out
            step.output_map[head_output(task, out) if host else out] = ens_name
            _tensor(cfg.output, ens_name, dtype, dims)
    cfg.parameters["tasks"].string_value = json.dumps(sorted(heads))
    return cfg


def write_config(cfg: mc.ModelConfig, path: Path) -> None:
    """Write ``cfg`` as protobuf text to ``path`` atomically (temp file beside, then rename)."""
    atomic_write_bytes(path, text_format.MessageToString(cfg).encode())


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` back into a ``ModelConfig``.

    Raises:
        ArtifactError: If the file is missing or not a valid model config.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model config {path} is missing; rebuild the repository (build_repository)")
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as err:
        raise ArtifactError(f"{path} is not a valid Triton model config: {err}") from err
