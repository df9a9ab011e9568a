"""Sustained load: 16 clients for 60 s on the embedded server (opt-in: POLYHEAD_SOAK=1)."""

import os

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(os.environ.get("POLYHEAD_SOAK") != "1", reason="soak runs only with POLYHEAD_SOAK=1"),
]


def test_sixteen_clients_for_sixty_seconds_fail_nothing_and_memory_stays_flat():
    from bench import soak

    report = soak.run(None, clients=16, duration_s=60.0, sample_s=5.0, warmup_s=15.0)
    assert report.failed == 0, report.errors[:5]
    assert report.ok > 1000 and report.p95_ms == report.p95_ms  # p95 reported (not nan)
    assert len(report.pss_mib) >= 12
    first = [m for t, m in report.pss_mib if t >= report.warmup_s][0]
    # flat: growth after warm-up within 10% of the server's footprint (allocator and arena noise)
    assert report.memory_growth_mib() < max(0.10 * first, 16.0), report.pss_mib
