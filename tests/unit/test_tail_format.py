"""`recsys tail`'s line names both latencies: from the event's own time and from its arrival in Kafka."""

from streaming.jobs.tail import format_recommendation


def test_line_labels_both_latencies():
    d = {"user": "u1", "items": ["i4"], "source": "blend", "event_ts": 1_000, "ingest_ts": 1_824, "published_ts": 1_861}
    line = format_recommendation(d)
    assert "latency: since event 861ms, since ingest 37ms" in line


def test_a_missing_time_shows_a_dash_not_a_wrong_number():
    line = format_recommendation({"user": "u1", "items": [], "event_ts": 5, "published_ts": 9})
    assert "since event 4ms, since ingest -" in line
