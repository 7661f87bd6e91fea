"""slmkit: small language models on ordinary CPUs.

Importing this package is cheap: torch, transformers and every optional backend are imported
inside the functions that need them. Use the submodules:

    from slmkit import models, data, eval
    model, tok = models.load("default")
"""

__version__ = "0.1.0"

from slmkit.errors import SlmkitError

__all__ = ["SlmkitError", "__version__"]
