from __future__ import annotations

import pytest

from tests.k8s.manifests import OVERLAYS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Overlay name -> its rendered manifests."""
    return {o: render(o) for o in OVERLAYS}
