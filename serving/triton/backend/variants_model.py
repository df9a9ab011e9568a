"""The in_trunk ``trunk`` model holding every trunk variant at once: the variant is chosen per request.

The repository's per-request variants mode (``RepositoryOptions.variants="per_request"``) copies
this file next to ``model.py`` and ``variant_choice.py`` in every trunk version directory and sets
the config's ``default_model_filename`` to it. It is ``model.py``'s model (loaded from the file
beside it, so it needs nothing on ``sys.path``) with two changes:

- ``initialize`` also opens ``<model dir>/<v>/model.onnx`` of every other trunk version (config
  parameter ``versions``: ``{"<v>": "<variant>"}``), each verified against ``sha256_by_version``
  and on that version's execution providers; every variant feeds the same head sessions (every
  variant keeps the ``p3,p4,p5`` contract);
- ``execute`` resolves each request's variant (:mod:`variant_choice`: the request parameter
  ``variant``, else the repository's ``live_variant.json``, else the loaded version's variant),
  answers a request naming a variant that is not held with an error listing the held ones (the
  other requests of the execute are still run), and runs each variant's requests with
  ``model.py``'s code on that variant's parts; Triton's metrics endpoint counts the requests each
  variant answered (:data:`ANSWERED_METRIC`, labels ``model`` and ``variant``), so what ``auto``
  chose is visible in Prometheus.

Config parameters read besides ``model.py``'s: ``versions`` and ``variant_table`` (JSON list of
``{"name", "accuracy", "b1_ms", "b8_ms"}``: what ``auto`` ranks and predicts with).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import triton_python_backend_utils as pb_utils


def _sibling(module: str, file: str) -> ModuleType:
    """Import ``file`` lying beside this one under the name ``module``."""
    spec = importlib.util.spec_from_file_location(module, Path(__file__).resolve().with_name(file))
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


leaf = _sibling("polyhead_leaf_model", "model.py")
choice = _sibling("polyhead_variant_choice", "variant_choice.py")


#: Triton metric (on its ``/metrics`` endpoint) counting the requests each held variant answered.
ANSWERED_METRIC = "polyhead_variant_requests_total"


def _answered_counters(model: str, variants: list[str]) -> tuple[object, dict]:
    """The family of :data:`ANSWERED_METRIC` and one counter per variant (labels ``model``, ``variant``).

    ``(None, {})`` without the python backend's custom metrics (Triton < 23.05).
    """
    family_type = getattr(pb_utils, "MetricFamily", None)
    if family_type is None:
        return None, {}
    family = family_type(name=ANSWERED_METRIC, kind=family_type.COUNTER,
                         description="requests answered per trunk variant (per-request variants mode)")
    return family, {name: family.Metric(labels={"model": model, "variant": name}) for name in variants}


class TritonPythonModel(leaf.TritonPythonModel):
    """``model.py``'s model over every trunk variant (see the module docstring)."""

    def initialize(self, args: dict) -> None:
        """Load the loaded version's files (``model.py``), then every other version's ``model.onnx``.

        Args:
            args: Triton's initialisation arguments.
        """
        super().initialize(args)
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir, loaded = Path(args["model_repository"]), str(args["model_version"])
        try:
            versions = {str(v): str(n) for v, n in json.loads(params["versions"]).items()}
            table = json.loads(params.get("variant_table") or "[]")
        except (KeyError, ValueError) as err:
            raise pb_utils.TritonModelException(
                f"{self.name}: parameters versions / variant_table unreadable ({err}); rebuild the repository "
                "with `polyhead export --variants per-request`") from None
        options = leaf.session_options(params)
        trunk, heads = self.parts[0], self.parts[1:]
        self.variant_parts: dict[str, list] = {}
        for version, name in sorted(versions.items()):
            part = trunk
            if version != loaded:
                path = model_dir / version / "model.onnx"
                leaf._verify_sha256(path, leaf.expected_sha256(params, version), args["model_name"], version)
                providers = leaf.ExecutionProviders(self.name, params, version, leaf._instance_gpu(args))
                session = providers.session(path, options, trunk_file=True)
                part = (session, {o.name: o.name for o in session.get_outputs()})
                if set(part[1]) != set(trunk[1]):
                    raise pb_utils.TritonModelException(
                        f"{self.name}: variant {name!r} ({path}) has outputs {sorted(part[1])}, the loaded one "
                        f"{sorted(trunk[1])}: every held variant must keep the feature contract; rebuild")
            self.variant_parts[name] = [part, *heads]
        self.variant_caches: dict[str, dict] = {name: {} for name in self.variant_parts}
        rows = {row["name"]: row for row in table if isinstance(row, dict) and "name" in row}
        held = [choice.HeldVariant(name, float(rows.get(name, {}).get("accuracy", 0.0)),
                                   rows.get(name, {}).get("b1_ms"), rows.get(name, {}).get("b8_ms"))
                for name in self.variant_parts]
        self.choice = choice.VariantChoice(held, versions.get(loaded, held[0].name),
                                           model_dir.parent / choice.LIVE_VARIANT_FILE,
                                           max_batch=int(config.get("max_batch_size") or 8))
        self.answered_family, self.answered = _answered_counters(args["model_name"], list(self.variant_parts))
        leaf.return_freed_heap()  # the other variants' parse buffers

    def execute(self, requests: list) -> list:
        """Resolve every request's variant, then run each variant's requests with ``model.py``'s ``execute``.

        Args:
            requests: ``pb_utils.InferenceRequest`` objects.

        Returns:
            One response per request, in order (an error for a request naming a variant not held).
        """
        responses: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        parameters = [choice.parse_parameters(r.parameters() if hasattr(r, "parameters") else None) for r in requests]
        for idx, chosen in enumerate(self.choice.pick_batch(parameters)):
            if isinstance(chosen, ValueError):
                responses[idx] = leaf._error(f"{self.name}: {chosen}")
            else:
                groups.setdefault(chosen, []).append(idx)
        start = time.perf_counter()
        for name, members in groups.items():
            self.parts, self._stage_cache = self.variant_parts[name], self.variant_caches[name]
            for idx, response in zip(members, super().execute([requests[i] for i in members]), strict=True):
                responses[idx] = response
            if name in self.answered:
                self.answered[name].increment(len(members))
        if groups:
            self.choice.observe({n: len(m) for n, m in groups.items()}, (time.perf_counter() - start) * 1e3)
        return responses

    def finalize(self) -> None:
        """Release every variant's sessions and counters (the counters before their family)."""
        self.variant_parts, self.answered = {}, {}
        self.answered_family = None
        super().finalize()
