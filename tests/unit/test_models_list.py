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


def test_list_and_show_say_whether_a_version_has_a_ranker_and_its_gate(tmp_path, capsys):
    """A version with a ranker (passed its gate), one whose ranker was refused by its gate, one
    whose retrain had no events for a ranker, one from `recsys train` (no ranker, no record)."""
    import json

    store = ModelStore(tmp_path / "models")
    plain = train_into(store, seed=1)
    cfg = ConfidenceConfig()
    profiles = build_profiles(clustered_events(seed=2), cfg)
    said = "HR@10 0.2100 vs the fallback's 0.2000, MRR@10 0.1100 vs the fallback's 0.1000 on 400 held-out events"
    ranked_meta = {"ranker": {"published": True, "gate": {"passed": True, "note": said}, "sha256": "ab"}}
    refused_meta = {
        "ranker": {"published": False, "gate": {"passed": False, "note": "HR@10 below"}, "note": "ranker refused: x"}
    }
    absent_meta = {"ranker": {"published": False, "note": "no ranker: no events in the window (empty)"}}
    versions = {}
    for name, meta, ranker in (
        ("ranked", ranked_meta, b"a ranker"),
        ("refused", refused_meta, None),
        ("absent", absent_meta, None),
    ):
        model, _, _ = train(profiles, cfg, TrainConfig(factors=8, iterations=2), metadata=meta)
        store.save(model, publish=True, ranker=ranker)
        versions[name] = model.version

    assert main(["models", "list", "--model-dir", str(tmp_path / "models")]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"ranker=yes (gate passed: {said})" in lines[versions["ranked"]]
    assert "ranker=no (gate failed: HR@10 below)" in lines[versions["refused"]]
    assert "ranker=no (no events in the window (empty))" in lines[versions["absent"]]
    assert "ranker=no " in lines[plain.version]

    for name, stored, passed in (("ranked", True, True), ("refused", False, False), ("absent", False, None)):
        assert main(["models", "show", versions[name], "--model-dir", str(tmp_path / "models")]) == 0
        shown = json.loads(capsys.readouterr().out)["ranker"]
        assert shown["stored"] is stored, (name, shown)
        assert (shown["gate"] or {}).get("passed") is passed, (name, shown)
