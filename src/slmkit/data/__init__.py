"""Text data: sources (embedded default, files, jsonl, HF datasets), tokenising, calibration sets."""

from slmkit.data.calib import (
    DEFAULT_SPEC,
    Calibration,
    CalibSource,
    CalibSpec,
    allocate_rows,
    build_calibration,
    build_calibration_with_provenance,
    build_calibration_with_targets,
)
from slmkit.data.chunk import calibration_set, chunk, encode_docs, token_stream
from slmkit.data.selfgen import (
    generate_calibration_text,
    generate_calibration_text_with_provenance,
    generate_with_teacher_targets,
    model_fingerprint,
)
from slmkit.data.sources import (
    TextData,
    embedded_text,
    hf_dataset,
    jsonl_field,
    load_text,
    read_jsonl,
    text_files,
)

__all__ = ["DEFAULT_SPEC", "CalibSource", "CalibSpec", "Calibration", "TextData", "allocate_rows", "build_calibration",
           "build_calibration_with_provenance", "build_calibration_with_targets", "calibration_set",
           "generate_calibration_text", "generate_calibration_text_with_provenance",
           "generate_with_teacher_targets", "model_fingerprint", "chunk", "embedded_text", "encode_docs", "hf_dataset",
           "jsonl_field", "load_text", "read_jsonl", "text_files", "token_stream"]
