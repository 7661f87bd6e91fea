"""One training loop with a pluggable objective (`train`), its config and data."""

from slmkit.train.config import TrainConfig
from slmkit.train.data import IGNORE, Batches
from slmkit.train.loop import evaluate, train
from slmkit.train.objective import CausalLM, Objective, shifted_ce

__all__ = ["IGNORE", "Batches", "CausalLM", "Objective", "TrainConfig", "evaluate", "shifted_ce", "train"]
