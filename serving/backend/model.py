"""The one Triton python-backend model polyhead uses for every leaf (trunk versions and heads).

The repository builder copies this file next to ``model.onnx`` in each version directory. It runs
the ONNX file with onnxruntime on CPU, maps inputs and outputs by name from the model config,
computes only the outputs a request asks for, runs all requests of one ``execute`` call as one
batch (grouped by per-item shape) and answers failures with a ``TritonError`` response instead of
raising, so the stub process never dies on a bad request.

Config parameters read (all optional): ``intra_op_num_threads`` (default 1); ``sha256`` (a head's
file) or ``sha256_by_version`` (JSON ``{"<version>": sha256}``, the trunk's versions): when one
names this version, ``initialize`` hashes ``model.onnx`` and refuses to load a file that changed
after the repository was built.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """onnxruntime-backed leaf model (see module docstring)."""

    def initialize(self, args: dict) -> None:
        """Load ``model.onnx`` from this version directory and check it matches the config.

        Args:
            args: Triton's initialisation arguments (``model_config`` JSON, names, version).
        """
        config = json.loads(args["model_config"])
        self.name = f"{args['model_name']}:{args['model_version']}"
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        if not (version_dir / "model.onnx").is_file():
            version_dir = Path(__file__).resolve().parent
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        _verify_sha256(version_dir / "model.onnx", params, args["model_name"], str(args["model_version"]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_num_threads", "1") or 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [i["name"] for i in config["input"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        missing = (set(self.input_names) - onnx_inputs) | (set(self.output_dtypes) - onnx_outputs)
        if missing:
            raise pb_utils.TritonModelException(
                f"{self.name}: config names {sorted(missing)} are not in model.onnx "
                f"(inputs {sorted(onnx_inputs)}, outputs {sorted(onnx_outputs)}); rebuild the repository"
            )

    def execute(self, requests: list) -> list:
        """Run every request; requests with the same per-item input shapes share one session run.

        Args:
            requests: ``pb_utils.InferenceRequest`` objects.

        Returns:
            One ``pb_utils.InferenceResponse`` per request, in order.
        """
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for idx, request in enumerate(requests):
            try:
                feeds = self._inputs(request)
            except ValueError as err:
                responses[idx] = _error(f"{self.name}: {err}")
                continue
            # unbatched models run each request alone; batched ones group by per-item shape
            key = tuple(feeds[n].shape[1:] for n in self.input_names) if self.batched else (idx,)
            groups.setdefault(key, []).append((idx, feeds))
        for members in groups.values():
            self._run_group(requests, members, responses)
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

    def _run_group(self, requests: list, members: list, responses: list) -> None:
        """Concatenate ``members``' inputs, run the session once, split and fill ``responses``."""
        wanted: list[str] = []
        for idx, _ in members:
            for name in requests[idx].requested_output_names() or list(self.output_dtypes):
                if name not in wanted:
                    wanted.append(name)
        try:
            feeds = {n: np.concatenate([f[n] for _, f in members]) for n in self.input_names}
            outputs = dict(zip(wanted, self.session.run(wanted, feeds), strict=True))
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

    def finalize(self) -> None:
        """Release the onnxruntime session."""
        self.session = None


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


def _verify_sha256(path: Path, params: dict[str, str], model: str, version: str) -> None:
    """Raise ``TritonModelException`` if ``path``'s sha256 differs from the one in the config.

    Args:
        path: The version's ``model.onnx``.
        params: The config's string parameters (``sha256`` or ``sha256_by_version``).
        model: Model name, for the message.
        version: Version being loaded.
    """
    expected = expected_sha256(params, version)
    if not path.is_file():
        return  # onnxruntime's error names the missing file
    if expected is None:
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_warn(f"{model}:{version}: config records no sha256; {path} loads unverified")
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        what = f"head '{model[5:]}' (`polyhead add-task` or `polyhead train`)" if model.startswith("head_") else (
            "trunk variant (`polyhead train` or `polyhead compress`)")
        raise pb_utils.TritonModelException(
            f"model '{model}' version {version}: {path} has sha256 {actual[:16]}..., but its config.pbtxt "
            f"records {expected[:16]}...: the file changed after the repository was built, refusing to load it; "
            f"rebuild the repository with `polyhead export` (it copies the workspace's verified file; "
            f"if that one is bad too, re-export the {what})"
        )


def _error(message: str):  # noqa: ANN202 (pb_utils type)
    """An error response carrying ``message``."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
