"""The one Triton python-backend model polyhead uses for every leaf (trunk versions and heads).

The repository builder copies this file next to the ONNX files in each version directory. It runs
them with onnxruntime on the execution providers the config asks for (see below), maps inputs and
outputs by name from the model config, computes only the outputs a request asks for, runs all
requests of one ``execute`` call as one batch (grouped by per-item shape) and answers failures with
a ``TritonError`` response instead of raising, so the stub process never dies on a bad request.

Three shapes of leaf:

- one graph (``trunk``, ``head_<task>``): ``model.onnx``, config outputs named as in the graph;
- a heads host (``heads``, the shared heads layout): the config parameter ``heads`` is JSON
  ``{"<task>": "<sha256>"}``; ``<task>.onnx`` is loaded per task and served as outputs
  ``<task>_<output>``. Only the tasks whose outputs a request names are run, so an ensemble step
  that maps one task's outputs runs one head, and the fan-out runs them all, in one process;
- a trunk hosting the heads (the in_trunk layout): ``model.onnx`` plus ``heads`` whose files lie in
  ``<model dir>/<heads_dir>``; the heads read the trunk's outputs ``p3,p4,p5``, which the trunk
  computes whenever a request asks for them or for a head's outputs.

Config parameters read (all optional): ``intra_op_num_threads`` (default 1); ``request_workers``
(default 1: more runs the requests of one ``execute`` on that many threads, each alone instead of
as one batch: every trunk pass is one task, then the request's heads in that many chunks);
``heads_dir`` (see above); ``sha256`` (a head's file) or ``sha256_by_version`` (JSON
``{"<version>": sha256}``, the trunk's versions) or the per-task sha256 of ``heads``:
``initialize`` hashes each file it loads and refuses one that changed after the repository was
built; ``shared_cpu_arena`` (``"1"``: every session of the process allocates its CPU buffers from
one arena registered with onnxruntime's environment, so sessions that never run at once, such
as the per-request variants, do not each keep a peak-sized arena).

Execution providers: ``execution_providers`` is a JSON list, in order of preference, of
``{"name": "<onnxruntime provider>", "options": {"<key>": "<value>"}}`` (default: CPU only);
``execution_providers_by_version`` (JSON ``{"<version>": [...]}``) overrides it for a trunk
version's ``model.onnx``. ``initialize`` keeps the providers this onnxruntime offers
(``ort.get_available_providers()``), always ends the list with the CPU, sets ``device_id`` of GPU
providers to the instance's GPU (``KIND_GPU`` instances), and logs a warning naming what was asked,
what is available and how to fix it when a provider is missing or when a session runs on another
provider than the first asked (onnxruntime falls back by itself when, e.g., CUDA libraries are
missing). An unknown provider name or a malformed list fails the load.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_SHARED_ARENA: list[bool] = []  # registered once per process (onnxruntime refuses a second one)


def session_options(params: dict) -> ort.SessionOptions:
    """Session options from the config parameters: threads, no spinning, the shared CPU arena."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_num_threads", "1") or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # denormal activations cost fine-tuned sub-networks ~10 %; the flag sets this (stub) process's
    # FTZ/DAZ flags, so it stays out of shared/onnx_session.py, which runs in callers' processes
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if params.get("shared_cpu_arena") == "1":
        if not _SHARED_ARENA:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_ARENA.append(True)
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def return_freed_heap() -> None:
    """Hand the heap that loading freed (ONNX parse buffers, rewritten weights) back: glibc ``malloc_trim``."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: no ldconfig subprocess
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        pass


class TritonPythonModel:
    """onnxruntime-backed leaf model (see module docstring)."""

    def initialize(self, args: dict) -> None:
        """Load this version's ONNX file(s) and check they match the config.

        Args:
            args: Triton's initialisation arguments (``model_config`` JSON, names, version).
        """
        config = json.loads(args["model_config"])
        self.name = f"{args['model_name']}:{args['model_version']}"
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = session_options(params)
        model, version = args["model_name"], str(args["model_version"])
        providers = ExecutionProviders(self.name, params, version, _instance_gpu(args))
        # parts, in run order: (session, served output name -> graph output name); a part's inputs
        # are the request's inputs or the served outputs of the parts before it
        self.parts: list[tuple[ort.InferenceSession, dict[str, str]]] = []
        self.head_sessions: set[int] = set()  # id() of the sessions that run a head (served prefix "<task>_")
        for path, expected, prefix in _graph_files(version_dir, Path(args["model_repository"]), params, version):
            _verify_sha256(path, expected, model, version)
            session = providers.session(path, options, trunk_file=not prefix)
            self.parts.append((session, {f"{prefix}{o.name}": o.name for o in session.get_outputs()}))
            if prefix:
                self.head_sessions.add(id(session))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.workers = int(params.get("request_workers", "1") or 1)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="polyhead") if self.workers > 1 else None
        self._stage_cache: dict[tuple[str, ...], tuple[list, list[list]]] = {}
        self.input_names = [i["name"] for i in config["input"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        served = {name for _, names in self.parts for name in names}
        missing = set(self.output_dtypes) - served
        available = set(self.input_names)
        for session, names in self.parts:
            missing |= {i.name for i in session.get_inputs()} - available
            available |= set(names)
        if missing:
            raise pb_utils.TritonModelException(
                f"{self.name}: config names {sorted(missing)} that the ONNX files in {version_dir} do not "
                f"provide (outputs {sorted(served)}); rebuild the repository"
            )
        return_freed_heap()  # glibc keeps it mapped otherwise: ~12 MiB per stub (docs/benchmarks.md)

    def execute(self, requests: list) -> list:
        """Run every request; requests with the same per-item input shapes share one session run.

        Args:
            requests: ``pb_utils.InferenceRequest`` objects.

        Returns:
            One ``pb_utils.InferenceResponse`` per request, in order.
        """
        responses: list = [None] * len(requests)
        members: list[tuple[int, dict[str, np.ndarray]]] = []
        for idx, request in enumerate(requests):
            try:
                members.append((idx, self._inputs(request)))
            except ValueError as err:
                responses[idx] = _error(f"{self.name}: {err}")
        if self.pool is not None:
            self._run_side_by_side(requests, members, responses)
            return responses
        # unbatched models run each request alone; batched ones group by per-item shape
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for idx, feeds in members:
            key = tuple(feeds[n].shape[1:] for n in self.input_names) if self.batched else (idx,)
            groups.setdefault(key, []).append((idx, feeds))
        for group in groups.values():
            self._run_group(requests, group, responses)
        return responses

    def _inputs(self, request) -> dict[str, np.ndarray]:  # noqa: ANN001 (pb_utils type)
        """Return the request's input arrays by name, checked against the session's dtypes."""
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input '{name}' is missing; send all of {self.input_names}")
            feeds[name] = tensor.as_numpy()
        return feeds

    def _run_side_by_side(self, requests: list, members: list, responses: list) -> None:
        """Run ``members`` (``(index, feeds)``, one request each) on the worker threads, then respond.

        Every request's trunk is one task of the pool; when it is done its heads are split into
        ``request_workers`` chunks, each one task. onnxruntime releases the GIL, so the tasks run
        side by side and the workers stay busy whatever the number of requests (one request: its
        head chunks in parallel; three on two workers: no worker idles through a whole request).
        """
        wanted = {idx: tuple(requests[idx].requested_output_names() or self.output_dtypes) for idx, _ in members}
        feeds_of = dict(members)
        values: dict[int, dict[str, np.ndarray]] = {}  # after the trunk; read by the head chunks, never changed
        outputs: dict[int, dict[str, np.ndarray]] = {}  # values plus every chunk's outputs
        failed: dict[int, Exception] = {}
        first: dict[Future, int] = {}
        later: dict[int, list] = {}  # request -> head chunks to run once its trunk is done
        for idx, feeds in members:
            trunk, later[idx] = self._stages(wanted[idx])
            first[self.pool.submit(_run_parts, trunk, feeds)] = idx
        second: dict[Future, int] = {}
        for future in as_completed(first):
            idx = first[future]
            try:
                values[idx] = {**feeds_of[idx], **future.result()}
            except Exception as err:  # noqa: BLE001 (answered as an error response below)
                failed[idx] = err
                continue
            outputs[idx] = dict(values[idx])
            for chunk in later[idx]:
                second[self.pool.submit(_run_parts, chunk, values[idx])] = idx
        for future in as_completed(second):
            idx = second[future]
            try:
                outputs[idx].update(future.result())
            except Exception as err:  # noqa: BLE001
                failed[idx] = err
        for idx, _ in members:
            if idx in failed:
                responses[idx] = _error(f"{self.name}: onnxruntime failed: {failed[idx]}")
            else:
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(outputs[idx][n], dtype=self.output_dtypes[n]))
                           for n in wanted[idx]]
                responses[idx] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_group(self, requests: list, members: list, responses: list) -> None:
        """Concatenate ``members``' inputs, run the planned parts once, split and fill ``responses``."""
        wanted: list[str] = []
        for idx, _ in members:
            for name in requests[idx].requested_output_names() or list(self.output_dtypes):
                if name not in wanted:
                    wanted.append(name)
        try:
            feeds = {n: np.concatenate([f[n] for _, f in members]) for n in self.input_names}
            outputs = _run_parts(self._plan(tuple(wanted)), feeds)
        except Exception as err:  # noqa: BLE001 (every failure becomes a response, never a crash)
            for idx, _ in members:
                responses[idx] = _error(f"{self.name}: onnxruntime failed: {err}")
            return
        start = 0
        for idx, feeds in members:
            size = feeds[self.input_names[0]].shape[0] if self.batched else 0
            names = requests[idx].requested_output_names() or list(self.output_dtypes)
            tensors = []
            for n in names:
                part = outputs[n][start : start + size] if self.batched else outputs[n]
                tensors.append(pb_utils.Tensor(n, np.ascontiguousarray(part, dtype=self.output_dtypes[n])))
            responses[idx] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += size

    def _stages(self, wanted: tuple[str, ...]) -> tuple[list, list[list]]:
        """:meth:`_plan` for ``wanted`` split for the pool: the parts before the heads, then the head chunks.

        Cached per ``wanted`` (an ensemble step always asks for the same outputs).
        """
        if wanted not in self._stage_cache:
            plan = self._plan(wanted)
            trunk = [part for part in plan if id(part[0]) not in self.head_sessions]
            heads = [part for part in plan if id(part[0]) in self.head_sessions]
            chunks = [heads[i :: self.workers] for i in range(self.workers) if heads[i :: self.workers]]
            self._stage_cache[wanted] = (trunk, chunks)
        return self._stage_cache[wanted]

    def _plan(self, wanted: tuple[str, ...]) -> list[tuple[ort.InferenceSession, dict[str, str], list[str]]]:
        """The parts to run for outputs ``wanted``, in order, each with the served outputs to fetch.

        A part runs if it serves a wanted output or one a later running part reads (the trunk's
        features when a head is asked); parts with nothing to fetch are skipped.
        """
        plan, needed = [], set(wanted)
        for session, names in reversed(self.parts):
            fetch = [n for n in names if n in needed]
            if fetch:
                plan.append((session, names, fetch))
                needed |= {i.name for i in session.get_inputs()}
        return plan[::-1]

    def finalize(self) -> None:
        """Release the onnxruntime sessions."""
        self.parts = []
        if self.pool is not None:
            self.pool.shutdown()


def _run_parts(parts: list, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``parts`` (``(session, served -> graph names, served names to fetch)``) in order.

    Each part reads its inputs from ``values`` or from the parts before it.

    Returns:
        The fetched outputs by served name (``values`` is not changed).
    """
    out: dict[str, np.ndarray] = {}
    for session, names, fetch in parts:
        feeds = {i.name: out[i.name] if i.name in out else values[i.name] for i in session.get_inputs()}
        out.update(zip(fetch, session.run([names[n] for n in fetch], feeds), strict=True))
    return out


def _graph_files(
    version_dir: Path, model_dir: Path, params: dict[str, str], version: str
) -> list[tuple[Path, str | None, str]]:
    """``(path, expected sha256 or None, served output prefix)`` of every ONNX file to load, in run order.

    ``model.onnx`` of the version first (if the version has one), then the ``heads`` files from
    ``model_dir / heads_dir`` (default: the version directory).

    Raises:
        pb_utils.TritonModelException: If the ``heads`` parameter is not a JSON object.
    """
    files = []
    if (version_dir / "model.onnx").is_file() or not params.get("heads"):
        files.append((version_dir / "model.onnx", expected_sha256(params, version), ""))
    if not params.get("heads"):
        return files
    try:
        heads = json.loads(params["heads"])
    except json.JSONDecodeError as err:
        raise pb_utils.TritonModelException(f"parameter heads is not JSON ({err})") from None
    if not isinstance(heads, dict) or not heads:
        raise pb_utils.TritonModelException("parameter heads must map task -> sha256 (at least one task)")
    heads_dir = model_dir / params["heads_dir"] if params.get("heads_dir") else version_dir
    return files + [(heads_dir / f"{task}.onnx", sha or None, f"{task}_") for task, sha in sorted(heads.items())]


def expected_sha256(params: dict[str, str], version: str) -> str | None:
    """The sha256 the config records for ``version``'s ``model.onnx`` (``None`` if it records none).

    Args:
        params: The config's string parameters.
        version: The version being loaded.

    Raises:
        pb_utils.TritonModelException: If ``sha256_by_version`` is not a JSON object.
    """
    if params.get("sha256"):
        return params["sha256"]
    try:
        by_version = json.loads(params.get("sha256_by_version") or "{}")
    except json.JSONDecodeError as err:
        raise pb_utils.TritonModelException(f"parameter sha256_by_version is not JSON ({err})") from None
    if not isinstance(by_version, dict):
        raise pb_utils.TritonModelException("parameter sha256_by_version must map version -> sha256")
    return by_version.get(version) or None


def _verify_sha256(path: Path, expected: str | None, model: str, version: str) -> None:
    """Raise ``TritonModelException`` if ``path``'s sha256 differs from ``expected``.

    Args:
        path: An ONNX file of this version.
        expected: The sha256 the config records for it (``None``: none recorded).
        model: Model name, for the message.
        version: Version being loaded.
    """
    if not path.is_file():
        return  # onnxruntime's error names the missing file
    if expected is None:
        _warn(f"{model}:{version}: config records no sha256; {path} loads unverified")
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        what = "trunk variant (`polyhead train` or `polyhead compress`)"
        if model.startswith("head_") or path.name != "model.onnx":  # head_<task>, or a file <task>.onnx
            head = model[5:] if model.startswith("head_") else path.stem
            what = f"head '{head}' (`polyhead add-task` or `polyhead train`)"
        raise pb_utils.TritonModelException(
            f"model '{model}' version {version}: {path} has sha256 {actual[:16]}..., but its config.pbtxt "
            f"records {expected[:16]}...: the file changed after the repository was built, refusing to load it; "
            f"rebuild the repository with `polyhead export` (it copies the workspace's verified file; "
            f"if that one is bad too, re-export the {what})"
        )


#: Providers that run on a GPU: their ``device_id`` becomes the instance's GPU.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
_GPU_FIX = ("install onnxruntime-gpu (with the CUDA, cuDNN and TensorRT libraries it needs, as in NVIDIA's "
            "NGC images) in the Python that runs Triton's python backend, in place of onnxruntime; or export "
            "the repository with `polyhead export --device cpu`")


class ExecutionProviders:
    """The onnxruntime providers of one model instance, from its config (see the module docstring).

    Args:
        label: ``<model>:<version>``, for messages.
        params: The config's string parameters.
        version: The version being loaded.
        gpu: The instance's GPU (``KIND_GPU``), else ``None``: the config's ``device_id`` stays.

    Raises:
        pb_utils.TritonModelException: If a parameter is not a JSON list of providers or names a
            provider this onnxruntime does not know.
    """

    def __init__(self, label: str, params: dict[str, str], version: str, gpu: str | None) -> None:
        self.label = label
        default = _parse_providers(params.get("execution_providers"), "execution_providers", label)
        try:
            by_version = json.loads(params.get("execution_providers_by_version") or "{}")
        except json.JSONDecodeError as err:
            raise pb_utils.TritonModelException(
                f"{label}: parameter execution_providers_by_version is not JSON ({err}); rebuild the repository "
                "with `polyhead export`") from None
        if not isinstance(by_version, dict):
            raise pb_utils.TritonModelException(
                f"{label}: parameter execution_providers_by_version must map version -> provider list, got "
                f"{type(by_version).__name__}; rebuild the repository with `polyhead export`")
        trunk = _parse_providers(by_version.get(version), f"execution_providers_by_version[{version}]", label,
                                 default)
        available = ort.get_available_providers()
        asked = list(dict.fromkeys(name for name, _ in default + trunk))
        self.missing = [name for name in asked if name not in available]
        self.lists = {False: _usable(default, available, gpu), True: _usable(trunk, available, gpu)}
        self._warned: set[tuple[str, ...]] = set()
        if self.missing:
            running = [name for name, _ in self.lists[True]]
            fix = _GPU_FIX if set(self.missing) & set(GPU_PROVIDERS) else "fix the config's execution_providers"
            _warn(f"{label}: execution providers {self.missing} asked for by the config are not available in "
                  f"onnxruntime {ort.__version__} (available: {available}); running on {running}. To fix it, {fix}")

    def session(self, path: Path, options: ort.SessionOptions, trunk_file: bool) -> ort.InferenceSession:
        """An onnxruntime session of ``path`` on the usable providers; warns if onnxruntime used others.

        Args:
            path: The ONNX file.
            options: Session options.
            trunk_file: ``path`` is the version's ``model.onnx`` (its providers may be per version).
        """
        providers = self.lists[trunk_file]
        session = ort.InferenceSession(str(path), options, providers=[name for name, _ in providers],
                                       provider_options=[opts for _, opts in providers])
        got = tuple(session.get_providers())
        if providers[0][0] not in got and got not in self._warned:
            self._warned.add(got)
            _warn(f"{self.label}: onnxruntime could not start {providers[0][0]} for {path.name} and runs it on "
                  f"{list(got)} instead (asked: {[name for name, _ in providers]}); the server log above says "
                  f"why. To fix it, check that the CUDA, cuDNN and TensorRT libraries onnxruntime "
                  f"{ort.__version__} needs are installed and visible, or export with `polyhead export --device cpu`")
        return session


def _parse_providers(value: object, where: str, label: str,
                     default: list[tuple[str, dict[str, str]]] | None = None) -> list[tuple[str, dict[str, str]]]:
    """``[(name, options)]`` from a JSON list (a string, or parsed); ``default`` (CPU) when absent.

    Raises:
        pb_utils.TritonModelException: If it is not a list of ``{"name", "options"}`` objects with
            string option values, or names a provider this onnxruntime does not know.
    """
    if value is None or value == "":
        return list(default or [(CPU_PROVIDER, {})])
    shape = ('a JSON list like [{"name": "CUDAExecutionProvider", "options": {"device_id": "0"}}, '
             '{"name": "CPUExecutionProvider"}]')
    try:
        entries = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise pb_utils.TritonModelException(
            f"{label}: parameter {where} is not JSON ({err}): {value!r}; write {shape}, or rebuild the "
            "repository with `polyhead export --device cpu|cuda`") from None
    parsed = []
    known = ort.get_all_providers()
    for entry in entries if isinstance(entries, list) and entries else [None]:
        if not _provider_entry(entry):
            raise pb_utils.TritonModelException(f"{label}: parameter {where} must be {shape}; got {value!r}")
        if entry["name"] not in known:
            raise pb_utils.TritonModelException(
                f"{label}: parameter {where} names unknown execution provider {entry['name']!r}; onnxruntime "
                f"{ort.__version__} knows {known}; fix the name (e.g. CUDAExecutionProvider)")
        parsed.append((entry["name"], {str(k): str(v) for k, v in entry.get("options", {}).items()}))
    return parsed


def _provider_entry(entry: object) -> bool:
    """Whether ``entry`` is ``{"name": str}`` or ``{"name": str, "options": {...}}``."""
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("options", {}), dict) and not set(entry) - {"name", "options"})


def _usable(providers: list[tuple[str, dict[str, str]]], available: list[str],
            gpu: str | None) -> list[tuple[str, dict[str, str]]]:
    """The ``providers`` in ``available``, GPU ones on ``gpu`` (if set), and the CPU last if not listed."""
    usable = []
    for name, options in providers:
        if name in available:
            usable.append((name, {**options, "device_id": gpu} if gpu is not None and name in GPU_PROVIDERS
                           else dict(options)))
    if CPU_PROVIDER not in {name for name, _ in usable}:
        usable.append((CPU_PROVIDER, {}))
    return usable


def _instance_gpu(args: dict) -> str | None:
    """The GPU of a ``KIND_GPU`` instance (``model_instance_device_id``), else ``None``."""
    if str(args.get("model_instance_kind", "")).upper() == "GPU":
        return str(args.get("model_instance_device_id", "0"))
    return None


def _warn(message: str) -> None:
    """Log ``message`` as a warning in the server log (``pb_utils.Logger``, Triton >= 22.xx)."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_warn(message)


def _error(message: str):  # noqa: ANN202 (pb_utils type)
    """An error response carrying ``message``."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
