"""Doctest collection skips the integration modules whose framework (an optional extra) is missing."""

import importlib.util

collect_ignore = [
    f"torch_pdt/integrations/{name}.py"
    for name in ("lightning", "transformers")
    if importlib.util.find_spec(name) is None
]
