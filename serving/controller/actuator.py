"""What the latency controller can change on the served trunk, and how: variants and the batching delay.

* :func:`read_variants`: the admitted variants with their accuracy (mean mAP over tasks, from
  ``variant.json``), relative cost (``latency_ms`` on the serving device) and Triton version number.
  The serving device is a ``latency_ms`` key (:mod:`transfer.export.device_keys`); every variant is
  compared on one key, never two, with a :class:`LatencyDeviceWarning` when it is not the one asked for.
* Batching delays: ``int`` microseconds (the trunk's ``dynamic_batching.max_queue_delay_microseconds``)
  or ``None`` for "dynamic batching off"; :func:`parse_delay` / :func:`format_delay` convert ``"off"``.
* :class:`TrunkSwitcher`: applies either knob with a Triton ``load("trunk", config=<override>)`` on
  every replica. The override is the config the replica serves with exactly one knob changed, so
  the other knob (the live version policy, or the live delay) stays as it is; Triton keeps serving
  the old model until the new one is ready, so no request fails.
"""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.triton.model_names import TRUNK_MODEL
from serving.triton.repository import read_trunk_versions, set_live_trunk_version
from shared.errors import ArtifactError, ConfigError, ServingError
from shared.workspace import Workspace
from transfer.export.device_keys import (
    LatencyDeviceWarning,
    comparison_key,
    device_kind,
    local_device_key,
    require_known_key,
)

#: A dynamic-batching delay in microseconds; ``None``: dynamic batching off.
Delay = int | None

#: Trunk config parameter recording the deployment's own delay the first time the switcher changes
#: it, so a restarted controller still knows where to return (``"off"`` or microseconds).
HOME_DELAY_PARAM = "polyhead_home_max_queue_delay_us"


def parse_delay(value: object) -> Delay:
    """``"off"``/``None``/``False`` (YAML's bare ``off``) -> ``None``; ``"500"``/``500`` -> ``500``.

    Raises:
        ConfigError: Not ``off`` and not a non-negative whole number of microseconds.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    try:
        delay = int(str(value).strip())
    except ValueError:
        delay = -1
    if isinstance(value, (bool, float)) or delay < 0:
        raise ConfigError(f"batch delay {value!r}: expected microseconds >= 0 (e.g. 500) or 'off'")
    return delay


def format_delay(delay: Delay) -> str:
    """``None`` -> ``"off"``, ``500`` -> ``"500us"``."""
    return "off" if delay is None else f"{delay}us"


def delay_key(delay: Delay) -> int:
    """Sort key: off < 0 < 100 < ... (off batches least)."""
    return -1 if delay is None else delay


def config_delay(cfg: object) -> Delay:
    """The batching delay of a ``ModelConfig`` (``None`` when it has no ``dynamic_batching``)."""
    if not cfg.HasField("dynamic_batching"):
        return None
    return int(cfg.dynamic_batching.max_queue_delay_microseconds)


def _set_delay(cfg: object, delay: Delay) -> None:
    """Set ``cfg``'s batching delay (``None``: batching off), recording the deployment's own delay first."""
    if HOME_DELAY_PARAM not in cfg.parameters:
        home = config_delay(cfg)
        cfg.parameters[HOME_DELAY_PARAM].string_value = "off" if home is None else str(home)
    if delay is None:
        cfg.ClearField("dynamic_batching")
    else:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.max_queue_delay_microseconds = delay


@dataclass(frozen=True)
class Variant:
    """One admitted trunk variant as the controller sees it.

    Attributes:
        name: Variant name (``trunk/<name>``).
        version: Its Triton version number in the repository.
        accuracy: Mean COCO mAP over tasks (``variant.json`` ``map``); higher is better.
        latency_ms: Measured latency at batch 1 on :attr:`device` (``variant.json`` ``latency_ms``), or ``None``.
        device: The ``latency_ms`` key :attr:`latency_ms` comes from (the same for every variant compared).
    """

    name: str
    version: int
    accuracy: float
    latency_ms: float | None = None
    device: str | None = None


def _latency(meta: dict, device: str | None) -> float | None:
    table = meta.get("latency_ms") or {}
    if not isinstance(table, dict) or not table:
        return None
    entry = table.get(device) if device is not None else next(iter(table.values()))
    if isinstance(entry, dict):
        entry = entry.get("b1", next(iter(entry.values()), None))
    return float(entry) if isinstance(entry, (int, float)) else None


def _on_front(meta: dict, device: str | None) -> bool:
    """Whether ``meta`` is on ``device``'s Pareto set (``pareto_by_device``; older files: ``pareto``)."""
    by_device = meta.get("pareto_by_device")
    if isinstance(by_device, dict):
        return by_device.get(device) is not False  # no flag for this device: unknown, kept
    return meta.get("pareto") is not False


def _comparison_device(metas: list[dict], serving_device: str | None, workdir: Path) -> str | None:
    """The one ``latency_ms`` key every variant is compared on (see :func:`read_variants`)."""
    tables = [m.get("latency_ms") if isinstance(m.get("latency_ms"), dict) else {} for m in metas]
    if serving_device is None:
        return comparison_key(next(iter(tables[0]), ""), tables)[0]
    if serving_device == "auto":
        wanted = local_device_key("auto")
    else:
        require_known_key(serving_device, tables, "--serving-device")
        wanted = serving_device
    key, why = comparison_key(wanted, tables)
    if why:
        same = key is not None and device_kind(key) == device_kind(wanted)
        instead = (f"comparing them on {key} instead ({'the same' if same else 'another'} kind of device)" if key
                   else "ranking them by accuracy only (no device common to all)")
        warnings.warn(f"serving device {wanted}: {why}; {instead}. Measure it with "
                      f"`polyhead measure --workdir {workdir} --device {device_kind(wanted)}` on the serving "
                      "machine, or pass --serving-device with a key they have", LatencyDeviceWarning, stacklevel=3)
    return key


def read_variants(
    workdir: Path, versions: Path | Mapping[int, str], serving_device: str | None = None
) -> list[Variant]:
    """Admitted variants on the serving device's Pareto set that the server has as trunk versions.

    Every variant is compared on one ``latency_ms`` key: ``serving_device`` when every admitted
    variant has its figures, else (a :class:`LatencyDeviceWarning` naming the missing device and
    the `polyhead measure` command) a key they all have, of the same kind of device first (another
    CPU for a CPU), else any; with none common, latency is ``None`` for all. The Pareto filter is
    that key's (``pareto_by_device``; files without it: ``pareto``).

    Args:
        workdir: Workspace with ``trunk/<variant>/variant.json``.
        versions: Trunk version -> variant name, or a model repository (its ``versions.json``).
        serving_device: ``latency_ms`` key of the device Triton serves on (``cuda-nvidia-h200``),
            ``auto`` (this machine's key: in Kubernetes the controller pod is not the GPU pod, so
            pass the key), or ``None``: the first key every variant has, no preference.

    Raises:
        ArtifactError: No usable variant.
        ConfigError: ``serving_device`` is a key no admitted variant has (the error names those there are).
    """
    if not isinstance(versions, Mapping):
        versions = read_trunk_versions(versions)
    admitted: list[tuple[int, str, dict]] = []
    for version, name in versions.items():
        path = Workspace.at(workdir).variant(name) / "variant.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if meta.get("admitted", False):
            admitted.append((version, name, meta))
    if not admitted:
        raise ArtifactError(f"no admitted trunk variant among versions {dict(versions)} in {workdir}/trunk")
    device = _comparison_device([meta for _, _, meta in admitted], serving_device, workdir)
    usable = [(version, name, meta) for version, name, meta in admitted if _on_front(meta, device)]
    # Rank on the tasks every usable variant was evaluated on, so a task evaluated on one variant
    # only (e.g. added later) cannot make that variant look more or less accurate.
    common = set.intersection(*(set(meta.get("map") or {}) for _, _, meta in usable)) if usable else set()
    out = []
    for version, name, meta in usable:
        per_task = (meta.get("map") or {}).items()
        maps = [float(m["map"] if isinstance(m, dict) else m) for t, m in per_task if t in common]
        accuracy = sum(maps) / len(maps) if maps else 0.0
        out.append(Variant(name, version, accuracy, _latency(meta, device) if device else None, device))
    if not out:
        raise ArtifactError(f"no admitted trunk variant on the Pareto set of {device} among versions "
                            f"{dict(versions)} in {workdir}/trunk")
    if None in [v.latency_ms for v in out]:  # compare like with like: all known or none
        out = [Variant(v.name, v.version, v.accuracy, None, None) for v in out]
    return out


class TrunkSwitcher:
    """Applies a variant or a batching delay on every Triton replica behind ``server``.

    Every change is a ``load("trunk", config=<override>)``: the config the replica serves, with one
    knob changed. Reloading from the repository instead would drop the other knob (a delay set by an
    override, or a version pinned by one). With ``repo`` (a local repository the server reads) the
    variant is also pinned in ``trunk/config.pbtxt`` (:func:`set_live_trunk_version`) so it survives
    a restart; the delay is never written there: a restarted server comes back at the repository's
    own delay, which is also what the controller returns to.

    Args:
        server: Triton gRPC ``host:port``; a host resolving to several addresses (a headless
            Service) means one replica per address, each switched.
        repo: Local model repository the server reads (pins persist), or ``None`` (S3/GCS).
        headers: gRPC metadata for model control (``serving.triton.model_control.control_headers()``).
        timeout_s: Deadline of one load call.
    """

    def __init__(
        self, server: str, repo: Path | None = None, headers: dict[str, str] | None = None, timeout_s: float = 120.0
    ) -> None:
        self.server = server
        self.repo = Path(repo) if repo is not None else None
        self.headers = headers
        self.timeout_s = timeout_s

    def replicas(self) -> list[str]:
        """``ip:port`` of every address ``server`` (comma-separated ``host:port`` s) resolves to, sorted, unique."""
        out: set[str] = set()
        for server in (x.strip() for x in self.server.split(",") if x.strip()):
            host, _, port = server.rpartition(":")
            try:
                infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
            except (OSError, ValueError) as err:
                raise ServingError(f"cannot resolve Triton address {server!r}: {err}") from err
            out |= {f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos}
        return sorted(out)

    def _call(self, address: str, method: str, *args: object, **kwargs: object) -> object:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(address)
        try:
            return getattr(client, method)(*args, headers=self.headers, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as err:
            raise ServingError(f"{method}('trunk') on Triton {address} failed: {err.message()}") from err
        finally:
            client.close()

    def served_config(self, address: str | None = None) -> object:
        """The trunk's ``ModelConfig`` as ``address`` (default: the first replica) serves it."""
        return self._call(address or self.replicas()[0], "get_model_config", TRUNK_MODEL).config

    def live_version(self) -> int:
        """Highest ready version of ``trunk`` (on the first replica)."""
        meta = self._call(self.replicas()[0], "get_model_metadata", TRUNK_MODEL)
        return max(int(v) for v in meta.versions)

    def versions(self) -> dict[int, str]:
        """Trunk version -> variant name, from the served trunk config (``versions`` parameter)."""
        cfg = self.served_config()
        if "versions" not in cfg.parameters:
            raise ServingError(f"the trunk served at {self.server} has no 'versions' parameter; rebuild its repository")
        return {int(v): n for v, n in json.loads(cfg.parameters["versions"].string_value).items()}

    def batch_delay(self) -> tuple[Delay, Delay]:
        """``(live, home)`` batching delay of the trunk (first replica); home: the deployment's own."""
        cfg = self.served_config()
        live = config_delay(cfg)
        if HOME_DELAY_PARAM not in cfg.parameters:
            return live, live
        return live, parse_delay(cfg.parameters[HOME_DELAY_PARAM].string_value)

    def _reload(self, address: str, cfg: object) -> None:
        from google.protobuf.json_format import MessageToJson

        self._call(address, "load_model", TRUNK_MODEL, config=MessageToJson(cfg, preserving_proto_field_name=True))

    def apply(self, variant: Variant) -> None:
        """Make ``variant`` live on every replica (the live batching delay is kept).

        Raises:
            ServingError: If a replica cannot load it (that replica keeps the old version).
        """
        if self.repo is not None:
            set_live_trunk_version(self.repo, variant.version)
        for address in self.replicas():
            cfg = self.served_config(address)
            cfg.ClearField("version_policy")
            cfg.version_policy.specific.versions.append(variant.version)
            self._reload(address, cfg)

    def reconcile(self, version: int, delay: Delay) -> list[str]:
        """Bring every replica to trunk ``version`` and batching ``delay``: those serving otherwise are reloaded.

        A replica that started after a switch serves what its repository says: the pinned version
        where the repository is shared and was pinned (``repo``), else the latest, and the
        repository's own delay. The controller calls this every step, so such a replica is brought
        to the controller's choice within one interval, whatever the storage.

        Returns:
            The replicas reloaded (``[]`` when all agreed).

        Raises:
            ServingError: If a replica cannot be read or reloaded (the others are still done first).
        """
        changed, failures = [], []
        for address in self.replicas():
            try:
                cfg = self.served_config(address)
                ready = self._call(address, "get_model_metadata", TRUNK_MODEL).versions
                if [int(v) for v in ready] == [version] and config_delay(cfg) == delay:
                    continue
                cfg.ClearField("version_policy")
                cfg.version_policy.specific.versions.append(version)
                if config_delay(cfg) != delay:
                    _set_delay(cfg, delay)
                self._reload(address, cfg)
                changed.append(address)
            except ServingError as err:
                failures.append(str(err))
        if failures:
            raise ServingError("; ".join(failures))
        return changed

    def apply_batch_delay(self, delay: Delay) -> None:
        """Set the trunk's dynamic-batching delay on every replica (``None``: batching off).

        The version policy (the live variant) and every other field are kept as served.

        Raises:
            ConfigError: ``delay`` is not whole microseconds >= 0 or ``None``.
            ServingError: If a replica cannot load the new config (it keeps serving the old one).
        """
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
            raise ConfigError(f"batch delay must be whole microseconds >= 0 or None (off), got {delay!r}")
        for address in self.replicas():
            cfg = self.served_config(address)
            _set_delay(cfg, delay)
            self._reload(address, cfg)
