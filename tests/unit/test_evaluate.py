import pytest

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.data.datasets import load_events, time_split
from recsys.evaluation import ranking
from recsys.evaluation.offline import METRICS, build_cases, evaluate
from recsys.model.train import TrainConfig
from tests.conftest import require_dataset
from tests.helpers import T0, ev


def test_ranking_metrics_by_hand():
    ranked = ["a", "b", "c", "d"]
    rel = {"b", "d", "z"}
    assert ranking.average_precision(ranked, rel, 3) == pytest.approx((1 / 2) / 3)
    assert ranking.average_precision(ranked, rel, 10) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert ranking.hit_rate(ranked, rel, 1) == 0.0 and ranking.hit_rate(ranked, rel, 2) == 1.0
    assert ranking.recall(ranked, rel, 10) == pytest.approx(2 / 3)
    assert ranking.reciprocal_rank(ranked, rel, 10) == 0.5
    import math

    assert ranking.ndcg(ranked, rel, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    )


def test_protocol_first_test_event_is_query_rest_is_truth():
    cfg = ConfidenceConfig()
    train = build_profiles([ev("u", "old", "view", T0)], cfg)
    test = [
        ev("u", "q", "view", T0 + 10),
        ev("u", "x", "view", T0 + 20),
        ev("u", "q", "view", T0 + 30),
        ev("solo", "only", "view", T0 + 5),
        ev("new", "a", "view", T0 + 1),
        ev("new", "b", "view", T0 + 2),
    ]
    cases = {c.user: c for c in build_cases(train, test, cfg)}
    assert set(cases) == {"u", "new"}  # a single test event gives no ground truth
    assert cases["u"].query == "q" and cases["u"].relevant == {"x"}  # the query item is on screen already
    assert set(cases["u"].profile.items) == {"old", "q"}  # history + the query event, as the stream has it
    assert set(train["u"].items) == {"old"}  # the training profile is not modified


@pytest.mark.data
@pytest.mark.parametrize("name", ["taobao", "yoochoose"])
def test_blend_beats_popularity_on_real_data(name):
    events = load_events(require_dataset(name))
    train, test = time_split(events, test_fraction=0.2)
    report = evaluate(train, test, kinds={"als": TrainConfig(factors=32, iterations=10)})
    methods = report["methods"]
    assert set(methods) == {"popularity", "als:similar", "als:user", "als:blend"}
    assert report["cases"] > 100
    for vals in methods.values():
        assert set(vals) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in vals.values())
    assert methods["als:blend"]["MAP@10"] > 2 * methods["popularity"]["MAP@10"]
    assert methods["als:blend"]["HR@10"] > methods["popularity"]["HR@10"]
