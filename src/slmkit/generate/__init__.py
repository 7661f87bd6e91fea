"""Text from a model: prompts and decoding."""
