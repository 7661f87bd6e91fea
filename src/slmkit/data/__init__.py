"""Text data: sources (embedded default, files, jsonl, HF datasets), tokenising, calibration mixes
of text. Calibration sets with rows a model writes itself are built by `slmkit.generate.calibration`."""

from slmkit.data.calib import DEFAULT_SPEC, Calibration, CalibSource, CalibSpec, allocate_rows
from slmkit.data.chunk import calibration_set, chunk, encode_docs, token_stream
from slmkit.data.sources import (
    TextData,
    embedded_text,
    hf_dataset,
    jsonl_field,
    load_text,
    read_jsonl,
    text_files,
)

__all__ = ["DEFAULT_SPEC", "CalibSource", "CalibSpec", "Calibration", "TextData", "allocate_rows",
           "calibration_set", "chunk", "embedded_text", "encode_docs", "hf_dataset", "jsonl_field",
           "load_text", "read_jsonl", "text_files", "token_stream"]
