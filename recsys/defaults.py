"""The project's default settings, in one place, with where each number comes from.

Scoring weights were chosen by the validation-window search recorded in docs/evaluation.md
(`python -m bench.tune_scoring`), not copied from the seed notebook.
"""

from .confidence import ConfidenceConfig
from .scoring import ScoringConfig
from .train import TrainConfig

CONFIDENCE = ConfidenceConfig()                     # notebook: 0.25 per click, 1 per buy, alpha 15
TRAIN = TrainConfig(kind="als", factors=64, regularization=0.05, iterations=15)
BPR = TrainConfig(kind="bpr", factors=64, regularization=0.01, iterations=100, learning_rate=0.05)
SCORING = ScoringConfig(n=10, user_weight=0.9, item_norm_power=0.5)
