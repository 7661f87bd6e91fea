"""Text from a model: THE decode loop (`Engine`: sequences join and leave at any step), sampling
and stop rules (`Sampling`), `generate()` on top, and chat-formatted prompts."""

from slmkit.generate.engine import Completion, Engine, StepOutput, generate
from slmkit.generate.sampling import Sampling

__all__ = ["Completion", "Engine", "Sampling", "StepOutput", "generate"]
