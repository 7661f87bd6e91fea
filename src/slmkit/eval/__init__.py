"""Evaluation: perplexity (two protocols), multiple choice, generation, speed & memory, reports."""

from slmkit.eval.generation import GenConfig, generation
from slmkit.eval.mc import MCConfig, load_items, multiple_choice
from slmkit.eval.perplexity import PerplexityConfig, perplexity, rolling_perplexity, window_perplexity
from slmkit.eval.report import Report
from slmkit.eval.speed import SpeedConfig, speed
from slmkit.eval.tasks import TASKS, evaluate

__all__ = ["GenConfig", "MCConfig", "PerplexityConfig", "Report", "SpeedConfig", "TASKS",
           "evaluate", "generation", "load_items", "multiple_choice", "perplexity",
           "rolling_perplexity", "speed", "window_perplexity"]
