import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.confidence import ConfidenceConfig, build_profiles
from streaming.worker.state import StateDecodeError, UserState, decode, encode
from tests.helpers import T0, ev

ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            ids,
            st.sampled_from(["view", "addtocart", "transaction", "favorite"]),
            st.integers(0, 10**9),
            st.one_of(st.none(), st.floats(0, 3600)),
        ),
        max_size=60,
    ),
    st.lists(ids, max_size=12),
    st.text(max_size=30),
    st.integers(-1, 2**62),
)
def test_round_trip_is_exact(evs, last, version, offset):
    cfg = ConfidenceConfig(half_life_days=3.0)
    profiles = build_profiles([ev("u", i, t, T0 + dt, dwell=d) for i, t, dt, d in sorted(evs, key=lambda x: x[2])], cfg)
    state = UserState(profiles.get("u") or UserState().profile, last, version, 1234)
    state.profile.offset = offset
    got = decode(encode(state))
    assert got.profile == state.profile  # bit-exact values, times, masks, history, offset
    assert (got.last_items, got.last_version, got.last_published_ms) == (last, version, 1234)


def test_compact_under_2kb_for_50_items():
    cfg = ConfidenceConfig()
    profile = build_profiles([ev("u", f"{1000000 + k}", "view", T0 + k) for k in range(50)], cfg)["u"]
    size = len(encode(UserState(profile, [f"{2000000 + k}" for k in range(10)], "20260101T000000Z-abcdef", 1)))
    assert size < 2048, size


@pytest.mark.parametrize("blob", [b"", b"\x09" + b"\0" * 40, encode(UserState())[:-3], encode(UserState()) + b"x"])
def test_corrupt_records_raise(blob):
    with pytest.raises(StateDecodeError):
        decode(blob)


def test_the_last_message_round_trips():
    """Version 2 keeps the whole last recommendation message, so the HTTP lookup can return it."""
    state = UserState(UserState().profile, ["i4", "i7"], "v1", 1764374400051)
    state.last_scores, state.last_source, state.last_query = [0.91, 0.88], "blend", "i7"
    state.last_event_ts, state.last_ingest_ts, state.last_partition = 1764374400000, 1764374400012, 2
    got = decode(encode(state))
    assert got.last_scores == pytest.approx([0.91, 0.88], rel=1e-6)  # float32
    assert (got.last_source, got.last_query, got.last_partition) == ("blend", "i7", 2)
    assert (got.last_event_ts, got.last_ingest_ts) == (1764374400000, 1764374400012)


# A record the version-1 encoder wrote (two items, a two-item last list): workers upgraded in
# place read their existing state and changelog.
V1_RECORD = bytes.fromhex(
    "012900000000000000e8cfe8cc9a01000002000000020002020500736b752d31000000000000d03f00cce8cc9a01000001"
    "0500736b752d32295c8fc2f528fc3fe8cfe8cc9a010000040500736b752d310500736b752d3233cce8cc9a0100001700"
    "3230323631313239543030333232345a2d3161326233630200693402006937"
)


def test_version_1_records_still_decode():
    got = decode(V1_RECORD)
    p = got.profile
    assert (p.offset, p.events, p.history, sorted(p.items)) == (41, 2, ["sku-1", "sku-2"], ["sku-1", "sku-2"])
    assert p.items["sku-2"].value == 1.76 and p.items["sku-2"].mask == 4
    assert (got.last_items, got.last_version, got.last_published_ms) == (
        ["i4", "i7"],
        "20261129T003224Z-1a2b3c",
        1764374400051,
    )
    assert (got.last_scores, got.last_source, got.last_query, got.last_partition) == ([], "", "", -1)
    assert decode(encode(got)).last_items == ["i4", "i7"]  # rewritten as version 2
