"""Small and large models together: the LM protocol and speculative decoding."""

from slmkit.collab.proxy import ProxyStats, proxy_generate
from slmkit.collab.speculative import (
                                       ModelDrafter,
                                       NoDrafter,
                                       PromptLookupDrafter,
                                       SpecStats,
                                       speculative_generate,
)
from slmkit.generate.lm import LM, LocalLM, Session, fingerprint

__all__ = ["LM", "LocalLM", "ModelDrafter", "NoDrafter", "PromptLookupDrafter", "Session", "SpecStats",
           "ProxyStats", "fingerprint", "proxy_generate", "speculative_generate"]
