"""The KV-cache argument of a causal LM's forward, across transformers versions.

transformers 5.24 renamed the cache argument and output field from `past_key_values` to `cache`.
The old name still works there, but every call then goes through a renaming decorator and warns,
and the old name is to be removed in 5.40. transformers 5.23 and earlier know only
`past_key_values`. slmkit supports both:

    out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    cache = output_cache(out)
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def cache_argument(cls: type) -> str:
    """The name under which `cls.forward` takes the KV cache: "cache" or "past_key_values"."""
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # a forward inspect cannot read: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache: Any) -> dict[str, Any]:
    """`{name: cache}` with the name `model`'s forward takes."""
    return {cache_argument(type(model)): cache}


def output_cache(out) -> Any:
    """The KV cache a forward returned, under either field name."""
    if "cache" in getattr(type(out), "__dataclass_fields__", ()):
        return out.cache
    return out.past_key_values
