"""Text from a model: THE decode loop (`Engine`: sequences join and leave at any step), sampling
and stop rules (`Sampling`), `generate()` on top, chat-formatted prompts, and the text a model
writes for calibration and distillation (`selfgen`, `build_calibration`)."""

from slmkit.generate.calibration import (
    build_calibration,
    build_calibration_with_provenance,
    build_calibration_with_targets,
)
from slmkit.generate.engine import Completion, Engine, StepOutput, generate
from slmkit.generate.sampling import Sampling

__all__ = ["Completion", "Engine", "Sampling", "StepOutput", "build_calibration",
           "build_calibration_with_provenance", "build_calibration_with_targets", "generate"]
