"""Root pytest configuration: the torch bridge is collected only where torch is installed.

``mmquant/torch`` imports torch (it is the optional extra); without torch and transformers the
doctest collection of the package leaves it out, and ``tests/torch`` skips with the reason.
"""

import importlib.util

_HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
collect_ignore = [] if _HAVE_TORCH else ["mmquant/torch"]
