"""The controller's variant knob on a per-request repository: the default variant file, no reload.

A repository built with ``--variants per-request`` holds every variant in the trunk's one backend
process; a request without a ``variant`` parameter runs the default named in
``<repository>/live_variant.json`` (:mod:`serving.triton.per_request_variants`). So switching the
variant is writing that file atomically: the backend stats it at every execute and takes the new
default on the next one. No model-control call, no second backend process, no request waits for a
load. Why a file and not a control request: it needs no open control endpoint (the model-control
key stays as it is), it survives a server restart like the pin of ``versions`` mode, and every
replica reading the same repository volume takes it at once; replicas with their own copy (an S3
sync) need the file synced too, the same as any repository change.

The batching delay is still applied by a ``trunk`` reload (:class:`TrunkSwitcher`).
"""

from __future__ import annotations

from pathlib import Path

from serving.controller.actuator import Delay, TrunkSwitcher, Variant, config_delay
from serving.triton.per_request_variants import held_variants, read_live_variant, write_live_variant
from serving.triton.repository import read_trunk_versions
from shared.errors import ServingError


class DefaultVariantSwitcher(TrunkSwitcher):
    """A :class:`TrunkSwitcher` whose variant changes rewrite the default-variant file of ``repo``.

    Args:
        server: Triton gRPC ``host:port`` (replicas as for :class:`TrunkSwitcher`; used for the delay).
        repo: The per-request repository the server reads.
        headers: gRPC metadata for model control (the batching delay only).
        timeout_s: Deadline of one load call.

    Raises:
        ConfigError: ``repo`` was not built with ``--variants per-request``.
    """

    def __init__(
        self, server: str, repo: Path, headers: dict[str, str] | None = None, timeout_s: float = 120.0
    ) -> None:
        super().__init__(server, repo, headers, timeout_s)
        self.held = held_variants(repo)

    def live_variant(self) -> str:
        """The default variant now: the file's, else the variant of the trunk version Triton loaded."""
        data = read_live_variant(self.repo)
        if data is not None and data["variant"] in self.held:
            return str(data["variant"])
        return read_trunk_versions(self.repo)[self.live_version()]

    def apply(self, variant: Variant) -> None:
        """Make ``variant`` the default of requests without one (no reload; the batching delay is kept).

        Raises:
            ConfigError: ``variant`` is not held by the repository.
        """
        write_live_variant(self.repo, variant.name)

    def reconcile(self, version: int, delay: Delay) -> list[str]:
        """Bring the default variant to ``version``'s and every replica to batching ``delay``.

        The variant is the file (rewritten only when it names another one); a replica serving
        another delay is reloaded with it (:meth:`apply_batch_delay`).

        Returns:
            The replicas reloaded for their delay (``[]`` when all agreed).

        Raises:
            ServingError: ``version`` is not a trunk version of the repository, or a replica
                cannot be read or reloaded.
        """
        versions = read_trunk_versions(self.repo)
        if version not in versions:
            raise ServingError(f"trunk version {version} is not in {self.repo}/versions.json ({versions})")
        data = read_live_variant(self.repo)
        if data is None or data["variant"] != versions[version]:
            write_live_variant(self.repo, versions[version])
        off = [a for a in self.replicas() if config_delay(self.served_config(a)) != delay]
        if off:
            self.apply_batch_delay(delay)
        return off
