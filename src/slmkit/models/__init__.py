"""Models: load (hub id | folder | .gguf | "default"), save, architecture adapters, tiny models."""

from slmkit.models.arch import ARCHS, ArchSpec, get_arch, supported
from slmkit.models.dtype import resolve_dtype
from slmkit.models.load import load, load_gguf
from slmkit.models.manifest import read_manifest
from slmkit.models.save import save

__all__ = ["ARCHS", "ArchSpec", "get_arch", "load", "load_gguf", "read_manifest",
           "resolve_dtype", "save", "supported"]
