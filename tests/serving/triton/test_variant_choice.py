"""The per-request variant choice of the backend (``backend/variant_choice.py``), on its own: no server."""

import json
import os

import pytest

from serving.triton.backend.variant_choice import AUTO, HeldVariant, VariantChoice, parse_parameters

HELD = [HeldVariant("light", 0.40, 5.0, 30.0), HeldVariant("accurate", 0.60, 10.0, 66.0)]


@pytest.fixture()
def choice(tmp_path):
    return VariantChoice(HELD, "accurate", tmp_path / "live_variant.json")


def write(path, **data):
    path.write_text(json.dumps(data))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even within one clock tick


def test_latency_is_interpolated_linearly_between_batch_1_and_8_and_extrapolated_past_it():
    v = HeldVariant("x", 0.5, 10.0, 66.0)
    assert v.execute_ms(1) == 10.0 and v.execute_ms(8) == 66.0
    assert v.execute_ms(4) == pytest.approx(34.0)
    assert v.execute_ms(15) == pytest.approx(122.0)
    assert v.execute_ms(4, scale=2.0) == pytest.approx(68.0)
    assert HeldVariant("y", 0.5).execute_ms(3) is None


def test_a_named_variant_is_served_and_an_unknown_one_is_refused_naming_the_held_ones(choice):
    assert choice.pick({"variant": "light"}, 1) == "light"
    with pytest.raises(ValueError, match=r"'nope' is not held; held variants: \['accurate', 'light'\]"):
        choice.pick({"variant": "nope"}, 1)


def test_without_a_parameter_the_default_file_applies_and_a_rewrite_is_taken_without_reload(choice, tmp_path):
    assert choice.pick({}, 1) == "accurate"  # no file: the loaded version's variant
    write(tmp_path / "live_variant.json", variant="light")
    assert choice.pick({}, 1) == "light"
    write(tmp_path / "live_variant.json", variant="accurate")
    assert choice.pick({}, 1) == "accurate"
    write(tmp_path / "live_variant.json", variant="gone")  # not held: back to the fallback, never a failure
    assert choice.pick({}, 1) == "accurate"
    (tmp_path / "live_variant.json").write_text("{not json")
    assert choice.refresh().variant == "accurate"


def test_auto_keeps_the_accurate_variant_while_the_queue_allows_and_drops_to_the_light_one_when_deep(choice):
    # objective 40 ms, headroom 0.8 -> 32 ms: accurate fits at depth 1 (10 ms), not at depth 4 (34 ms)
    assert choice.pick({"variant": AUTO, "objective_ms": 40}, 1) == "accurate"
    assert choice.pick({"variant": AUTO, "objective_ms": 40}, 4) == "light"  # 5 + 25 * 3 / 7 = 15.7 ms
    assert choice.pick({"variant": AUTO, "objective_ms": 1}, 4) == "light"  # nothing fits: the fastest
    assert choice.pick({"variant": AUTO}, 8) == "accurate"  # no objective: the most accurate


def test_auto_from_the_default_file_and_the_learned_scale_shift_the_choice(choice, tmp_path):
    write(tmp_path / "live_variant.json", variant=AUTO, objective_ms=40, headroom=0.8)
    assert choice.pick({}, 2) == "accurate"  # 18 ms <= 32 ms
    for _ in range(30):  # executes run 3x slower than variant.json says (and the next request waits for one)
        choice.observe({"accurate": 2}, 54.0)
    assert choice.scale == pytest.approx(3.0, rel=0.01)
    assert choice.pick({}, 2) == "light"


def test_request_parameters_are_read_from_their_json_text():
    assert parse_parameters('{"variant": "light", "objective_ms": 20}') == {"variant": "light", "objective_ms": 20}
    assert parse_parameters(None) == {} and parse_parameters("[1]") == {} and parse_parameters("{oops") == {}


def test_a_fallback_that_is_not_held_is_refused(tmp_path):
    with pytest.raises(ValueError, match="held variants"):
        VariantChoice(HELD, "missing", tmp_path / "f.json")


def test_a_request_that_already_waited_gets_a_faster_variant_and_a_skewed_stamp_is_ignored(choice):
    import time

    from serving.client.protocol import SENT_PARAMETER as CLIENT_NAME
    from serving.triton.backend.variant_choice import SENT_PARAMETER, waited_ms

    assert CLIENT_NAME == SENT_PARAMETER  # the client and the stub keep one name
    now = time.time_ns()
    assert waited_ms({SENT_PARAMETER: now - 25_000_000}, now_ns=now) == pytest.approx(25.0)
    assert waited_ms({SENT_PARAMETER: now + 5_000_000}, now_ns=now) is None  # from the future: a skewed clock
    assert waited_ms({SENT_PARAMETER: now - 61 * 10**9}, now_ns=now) is None
    assert waited_ms({SENT_PARAMETER: "soon"}) is None and waited_ms({}) is None
    # objective 40 ms, headroom 0.8 -> 32 ms: at depth 1 accurate takes 10 ms; after 25 ms queued it no longer fits
    fresh = {"variant": AUTO, "objective_ms": 40, SENT_PARAMETER: time.time_ns()}
    assert choice.pick(fresh, 1) == "accurate"
    queued = {**fresh, SENT_PARAMETER: time.time_ns() - 25_000_000}
    assert choice.pick(queued, 1) == "light"  # 25 + 5 <= 32
    late = {**fresh, SENT_PARAMETER: time.time_ns() - 35_000_000}
    assert choice.pick(late, 1) == "light"  # nothing fits: the fastest drains the queue


def test_the_client_stamps_the_callers_arrival_or_now_and_refuses_a_non_integer():
    import time

    from serving.client.protocol import SENT_PARAMETER, stamped
    from shared.errors import InputError

    before = time.time_ns()
    assert before <= stamped({"variant": "a"})[SENT_PARAMETER] <= time.time_ns()
    assert stamped({"variant": "a"}, before - 7) == {"variant": "a", SENT_PARAMETER: before - 7}
    for bad in (1.5e18, "now", True):
        with pytest.raises(InputError, match="arrived_unix_ns"):
            stamped({}, bad)


def test_the_auto_requests_of_one_execute_share_the_variant_that_fits_the_one_that_waited_longest(choice):
    import time

    from serving.triton.backend.variant_choice import SENT_PARAMETER

    now = time.time_ns()
    fresh = {"variant": AUTO, "objective_ms": 100, SENT_PARAMETER: now}
    old = {**fresh, SENT_PARAMETER: now - 60_000_000}  # 60 ms waited of a 100 ms objective (80 ms with headroom)
    # at depth 3 accurate takes 10 + 56 x 2 / 7 = 26 ms: fits the fresh ones, not the old one (86 ms)
    assert choice.pick(fresh, 3) == "accurate" and choice.pick(old, 3) == "light"
    assert choice.pick_batch([fresh, fresh, old]) == ["light"] * 3  # one batch, judged by the oldest
    assert choice.pick_batch([fresh, fresh, fresh]) == ["accurate"] * 3
    named, unknown, loose = {"variant": "accurate"}, {"variant": "nope"}, {"variant": AUTO}
    chosen = choice.pick_batch([named, old, unknown, loose])
    assert chosen[0] == "accurate" and chosen[1] == chosen[3] == "light"  # no objective: no bound of its own
    assert isinstance(chosen[2], ValueError) and "held variants" in str(chosen[2])  # fails alone


def test_the_arrival_rate_is_counted_up_to_the_youngest_arrival_seen_and_needs_a_full_window():
    from serving.triton.backend.variant_choice import ArrivalRate

    rate, ms = ArrivalRate(window_s=1.0), 1_000_000
    rate.add([t * 10 * ms for t in range(50)])  # 100 per second for 0.5 s
    assert rate.per_s() is None  # under one window seen: no figure rather than a low one
    rate.add([500 * ms + t * 5 * ms for t in range(120)])  # then 200 per second for 0.6 s
    assert rate.per_s() == pytest.approx(160.0, abs=2)  # the second before the youngest: 0.4 s x 100 + 0.6 s x 200
    rate.add([])  # an execute without stamps changes nothing
    assert rate.per_s() == pytest.approx(160.0, abs=2)


def test_auto_passes_over_a_variant_the_arrivals_outrun_even_while_the_waits_fit(choice):
    # capacity at batch 8: accurate 8 / 66 ms = 121/s, light 8 / 30 ms = 267/s; utilisation 0.9
    assert choice.capacity_per_s("accurate") == pytest.approx(121.2, abs=0.1)
    fresh = [(100.0, 0.0)]
    assert choice.fitting(1, fresh, rate_per_s=None) == "accurate"
    assert choice.fitting(1, fresh, rate_per_s=100.0) == "accurate"  # 100 <= 0.9 x 121
    assert choice.fitting(1, fresh, rate_per_s=150.0) == "light"  # its queue would grow
    assert choice.fitting(1, fresh, rate_per_s=1000.0) == "light"  # nothing keeps up: the fastest


def test_stamped_requests_feed_the_rate_that_turns_auto_to_the_variant_that_keeps_up(choice):
    import time

    from serving.triton.backend.variant_choice import SENT_PARAMETER

    def batch(start_ns: int, per_s: float, n: int) -> list[dict]:
        gap = int(1e9 / per_s)
        return [{"variant": AUTO, "objective_ms": 10_000, SENT_PARAMETER: start_ns + k * gap} for k in range(n)]

    now = time.time_ns()
    slow = batch(now - 3_000_000_000, 50.0, 60)  # 1.2 s at 50/s: accurate (121/s) keeps up
    assert set(choice.pick_batch(slow)) == {"accurate"}
    fast = batch(now - 1_500_000_000, 200.0, 240)  # then 1.2 s at 200/s: only light (267/s) does
    assert set(choice.pick_batch(fast)) == {"light"}
    assert choice.pick_batch([{"variant": "accurate"}]) == ["accurate"]  # a named variant is kept


def test_each_variant_learns_its_own_factor_once_it_ran_alone(choice):
    for _ in range(40):
        choice.observe({"accurate": 8}, 66.0 * 2)  # served at 2x its table figure
        choice.observe({"light": 8}, 30.0 * 4)  # the heads' cost weighs more on the light trunk: 4x
    assert choice.scale_of("accurate") == pytest.approx(2.0, rel=0.01)
    assert choice.scale_of("light") == pytest.approx(4.0, rel=0.01)
    # capacities from the served figures: accurate 8 / 132 ms, light 8 / 120 ms, not 8 / 30 ms x one factor
    assert choice.capacity_per_s("light") == pytest.approx(66.7, abs=0.2)
    choice.observe({"accurate": 4, "light": 4}, 200.0)  # a mixed execute moves only the shared factor
    assert choice.scale_of("light") == pytest.approx(4.0, rel=0.01)


def test_when_nothing_fits_the_fastest_is_the_tables_even_where_the_learned_factors_tie_the_variants(choice):
    # both trunks served at the same wall time (heads dominate): the factors make their predictions equal,
    # or flip them with noise; the trunk that is faster on the table still is, heads being the same
    choice.observe({"accurate": 1}, 30.0)
    choice.observe({"light": 1}, 31.0)
    assert choice.predicted_ms("light", 1) >= choice.predicted_ms("accurate", 1)
    assert choice.fitting(1, [(100.0, 900.0)]) == "light"
    assert choice.fastest(8) == "light"
