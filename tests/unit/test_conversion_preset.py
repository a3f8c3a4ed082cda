"""The documented switch to conversion-weighted confidence: a preset file every command takes."""

from pathlib import Path

from recsys.confidence import build_profiles
from recsys.config import Config, load_config
from tests.helpers import T0, ev

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "docs" / "presets" / "conversion.toml"


def test_preset_weighs_a_purchase_over_a_cart_over_a_view_and_changes_nothing_else():
    cfg = load_config(PRESET, env={})
    w = cfg.confidence.weights
    assert w["transaction"] > w["addtocart"] > w["view"] == w["click"]
    defaults = Config().confidence
    assert (cfg.confidence.alpha, cfg.confidence.half_life_days) == (defaults.alpha, defaults.half_life_days)
    assert cfg.stream == Config().stream and cfg.train == Config().train
    # and it does what it says: a bought item now outweighs a carted one, unlike the defaults
    events = [ev("u", "bought", "transaction", T0), ev("u", "carted", "addtocart", T0)]
    for ccfg, bought_first in ((cfg.confidence, True), (defaults, False)):
        conf = build_profiles(events, ccfg)["u"].confidence(ccfg)
        assert (conf["bought"] > conf["carted"]) is bought_first


def test_the_docs_name_the_preset_and_what_the_defaults_optimise():
    for page in ("README.md", "docs/configuration.md", "docs/evaluation.md"):
        text = (ROOT / page).read_text()
        assert "docs/presets/conversion.toml" in text, page
    assert "next-event hit rate" in (ROOT / "README.md").read_text()
    assert "next-event hit rate" in (ROOT / "docs" / "configuration.md").read_text()
