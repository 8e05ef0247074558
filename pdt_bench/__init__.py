"""The torch-pdt benchmark harness: tasks, methods, runs, reports (``pip install 'torch-pdt[bench]'``).

Everything here is outside the core library: models and datasets live in :mod:`pdt_bench.tasks`.
"""
