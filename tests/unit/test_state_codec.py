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


@pytest.mark.parametrize("blob", [b"", b"\x02" + b"\0" * 40, encode(UserState())[:-3], encode(UserState()) + b"x"])
def test_corrupt_records_raise(blob):
    with pytest.raises(StateDecodeError):
        decode(blob)
