"""Text data: sources (embedded default, files, jsonl, HF datasets), tokenising, calibration sets."""

from slmkit.data.chunk import calibration_set, chunk, encode_docs, token_stream
from slmkit.data.sources import (
    TextData, embedded_text, hf_dataset, jsonl_field, load_text, read_jsonl, text_files,
)

__all__ = ["TextData", "calibration_set", "chunk", "embedded_text", "encode_docs", "hf_dataset",
           "jsonl_field", "load_text", "read_jsonl", "text_files", "token_stream"]
