"""Collection rules for the doctest sweep over every module.

The ``tests/*_worker.py`` files are scripts that ``test_distributed*`` launch as separate ranks, not
test modules: importing one needs its engine (DeepSpeed is not in ``[test]``), so pytest never
collects them. The integration modules whose framework (an optional extra) is missing are skipped.
"""

import importlib.util

collect_ignore_glob = ["tests/*_worker.py"]
collect_ignore = [
    f"torch_pdt/integrations/{name}.py"
    for name in ("lightning", "transformers")
    if importlib.util.find_spec(name) is None
]
