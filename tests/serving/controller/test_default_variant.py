"""On a per-request repository the controller switches the variant by the default file: no trunk reload."""

import pytest

from serving.client import Detector
from serving.controller import Controller, ControllerConfig, Policy, read_variants
from serving.controller.default_variant import DefaultVariantSwitcher
from serving.triton.embedded_server import EmbeddedTriton, free_port
from serving.triton.model_configs import RepositoryOptions
from serving.triton.per_request_variants import read_live_variant
from serving.triton.repository import build_repository
from shared.errors import ConfigError

pytestmark = pytest.mark.triton


class Over:
    """Prometheus as the controller sees it: cars far over its objective."""

    def p95(self, source="client"):
        return {"cars": 0.2}


def cars_scores(url, image, variant=None):
    with Detector(url) as det:
        [result] = det.detect(image, tasks="cars", variant=variant)
    return [d.score for d in result["cars"]]


def test_a_step_down_rewrites_the_default_and_the_server_follows_without_reloading(workspace, fakes):
    fakes.add_variant_metrics(workspace)
    options = RepositoryOptions(heads_layout="in_trunk", variants="per_request", max_batch_size=4)
    repo = build_repository(workspace, options=options).path
    image = fakes.random_images(1)[0]
    with EmbeddedTriton(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                        admin_key="") as server:
        switcher = DefaultVariantSwitcher(server.url, repo)
        assert switcher.live_variant() == "small"  # no file yet: the loaded (latest) version's variant
        variants = read_variants(workspace, repo)
        by_name = {v.name: v for v in variants}
        assert switcher.reconcile(by_name["ref"].version, switcher.batch_delay()[0]) == []  # delay agrees: no reload
        assert read_live_variant(repo)["variant"] == "ref" and switcher.live_variant() == "ref"
        assert cars_scores(server.url, image) == cars_scores(server.url, image, "ref")
        loads = server.log_path.read_text().count("successfully loaded 'trunk'")
        config = ControllerConfig({"cars": 0.05}, breach_evals=1, cooldown_s=0.0)
        controller = Controller(Policy(variants, config, "ref", delays=switcher.batch_delay()), Over(), switcher)
        decision = controller.step()
        assert decision is not None and decision.to.name == "small"
        assert read_live_variant(repo)["variant"] == "small"
        assert cars_scores(server.url, image) == cars_scores(server.url, image, "small")
        assert server.log_path.read_text().count("successfully loaded 'trunk'") == loads


def test_the_switcher_refuses_a_repository_of_one_version_per_variant(workspace):
    repo = build_repository(workspace, max_batch_size=4).path
    with pytest.raises(ConfigError, match="--variants per-request"):
        DefaultVariantSwitcher("127.0.0.1:1", repo)
