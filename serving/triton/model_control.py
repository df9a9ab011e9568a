"""Who may change what Triton serves: the model-control key and a keyed model-control client.

Triton restricts protocol groups with ``--grpc-restricted-protocol`` / ``--http-restricted-api``
(``<groups>:<header>=<key>``). polyhead restricts ``model-repository`` (load, unload, repository
index) and the other admin groups, keyed by the ``POLYHEAD_ADMIN_KEY`` environment variable (a
Kubernetes Secret in the cluster). Inference, health, metadata, model config and statistics stay
open, so serving clients need no key.

Triton expects the key under different header names per protocol: HTTP takes the header as
configured (``polyhead-admin-key``), gRPC prefixes it (``triton-grpc-protocol-polyhead-admin-key``).
:func:`control_headers` returns the right one.

Example:
    >>> with ModelControl("127.0.0.1:8001") as control:   # key from POLYHEAD_ADMIN_KEY
    ...     control.load("head_boats")
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from serving.triton.deployment_facts import ADMIN_KEY_ENV, ADMIN_KEY_HEADER
from shared.errors import ServingError

#: Protocol groups polyhead restricts (the same set the Kubernetes overlays pass).
RESTRICTED_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")
#: gRPC metadata name Triton checks for ``ADMIN_KEY_HEADER``.
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


def admin_key(key: str | None = None) -> str | None:
    """The model-control key: ``key`` if given, else ``$POLYHEAD_ADMIN_KEY``; ``None`` if neither or empty."""
    if key is None:
        key = os.environ.get(ADMIN_KEY_ENV)
    return key or None


def restricted_flags(key: str | None) -> tuple[str, ...]:
    """Flags for tritonserver restricting :data:`RESTRICTED_PROTOCOLS` to holders of ``key`` (none for ``None``).

    Raises:
        ServingError: If the key holds characters the flag syntax cannot carry (``,:= `` or newlines).
    """
    if key is None:
        return ()
    if any(c in key for c in ",:= \t\n") or not key.isprintable():
        raise ServingError(
            f"{ADMIN_KEY_ENV} must not contain spaces, ',', ':' or '='; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    groups = ",".join(RESTRICTED_PROTOCOLS)
    return (
        f"--grpc-restricted-protocol={groups}:{ADMIN_KEY_HEADER}={key}",
        f"--http-restricted-api={groups}:{ADMIN_KEY_HEADER}={key}",
    )


def control_headers(key: str | None = None, protocol: str = "grpc") -> dict[str, str]:
    """Headers that authorise model control (empty without a key).

    Args:
        key: The key; default ``$POLYHEAD_ADMIN_KEY``.
        protocol: ``"grpc"`` (metadata for ``tritonclient.grpc``, ``headers=``) or ``"http"``.

    Raises:
        ValueError: For another protocol.
    """
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    key = admin_key(key)
    if key is None:
        return {}
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_KEY_HEADER: key}


def is_restricted_error(message: str) -> bool:
    """True when a Triton error message says the endpoint needs the key."""
    return "is restricted, expecting header" in message


@dataclass(frozen=True)
class ModelState:
    """One entry of Triton's repository index.

    Attributes:
        name: Model name.
        version: Version (empty when never loaded).
        state: ``READY``, ``UNAVAILABLE``, ``LOADING``, ... or empty when never loaded.
        reason: Why it is not ready (Triton's message), else empty.
    """

    name: str
    version: str
    state: str
    reason: str


class ModelControl:
    """Keyed model control (load, unload, reload, index) over gRPC, for add-task and the controller.

    Args:
        url: Triton gRPC ``host:port``.
        key: Model-control key; default ``$POLYHEAD_ADMIN_KEY`` (none: an unrestricted server).
        timeout_s: Deadline of one call (loads of big models take a while).
    """

    def __init__(self, url: str, key: str | None = None, timeout_s: float = 120.0) -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self.timeout_s = timeout_s
        self.headers = control_headers(key, "grpc")
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, method: str, *args: object, **kwargs: object) -> object:
        from tritonclient.utils import InferenceServerException

        try:
            return getattr(self._client, method)(*args, headers=self.headers, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as err:
            message = str(err.message()).split("\n")[0]
            if is_restricted_error(message):
                hint = "the key is wrong" if self.headers else f"no key was sent; set {ADMIN_KEY_ENV}"
                raise ServingError(
                    f"{what} refused by Triton {self.url}: model control is restricted and {hint} "
                    f"(ModelControl(url, key=...) or the {ADMIN_KEY_ENV} environment variable)"
                ) from err
            raise ServingError(f"{what} on Triton {self.url} failed: {message}") from err

    def load(self, name: str, config: str | None = None) -> None:
        """Load or reload model ``name`` (the old version serves until the new one is ready).

        Args:
            name: Model name.
            config: Optional JSON model-config override (e.g. a new ``version_policy``).

        Raises:
            ServingError: Refused (no or wrong key) or the load failed (Triton's reason).
        """
        self._call(f"load of model '{name}'", "load_model", name, config=config)

    reload = load

    def config(self, name: str) -> object:
        """The ``ModelConfig`` model ``name`` is served with now.

        Raises:
            ServingError: Unknown model or unreachable server.
        """
        return self._call(f"config of model '{name}'", "get_model_config", name).config

    def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Unload model ``name`` (in-flight requests finish first).

        Raises:
            ServingError: Refused or failed.
        """
        self._call(f"unload of model '{name}'", "unload_model", name, unload_dependents=unload_dependents)

    def index(self) -> list[ModelState]:
        """Every model of the repository with its state and reason.

        Raises:
            ServingError: Refused or failed.
        """
        index = self._call("repository index", "get_model_repository_index")
        return [ModelState(m.name, m.version, m.state, m.reason) for m in index.models]

    def ready_models(self) -> list[str]:
        """Names of the READY models, sorted."""
        return sorted({m.name for m in self.index() if m.state == "READY"})
