"""`recsys models list`: each version with its retrain gate's verdict and its held-out metrics."""

from recsys.confidence import ConfidenceConfig, build_profiles
from recsys.model.store import ModelStore
from recsys.model.train import TrainConfig, train
from streaming.cli.main import main
from tests.helpers import clustered_events, train_into


def test_list_shows_gate_and_held_out_metrics(tmp_path, capsys):
    store = ModelStore(tmp_path / "models")
    first = train_into(store, seed=1)  # `recsys train`'s kind: no gate, no held-out metrics
    holdout = {"HR@10": 0.3125, "MAP@10": 0.1402, "NDCG@10": 0.2011, "MAP@10_se": 0.0123}
    gate = {"passed": True, "cases": 160, "candidate_map10": 0.1402, "current": first.version, "current_map10": 0.1350}
    cfg = ConfidenceConfig()
    profiles = build_profiles(clustered_events(seed=2), cfg)
    second, _, _ = train(
        profiles,
        cfg,
        TrainConfig(factors=8, iterations=4),
        metadata={"gate": gate, "holdout": holdout, "metrics": holdout},
    )
    store.save(second, publish=True)

    assert main(["models", "list", "--model-dir", str(tmp_path / "models")]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()}
    old, new = lines[first.version], lines[second.version]
    assert new.startswith("* ") and old.startswith("  ")
    assert f"gate=passed (MAP@10 0.1402 vs 0.1350 of {first.version})" in new
    assert "HR@10=0.3125 MAP@10=0.1402 NDCG@10=0.2011 (MAP@10 ±0.0123)" in new
    assert "gate=none (not made by the retrain job)" in old and "held-out metrics: none" in old
