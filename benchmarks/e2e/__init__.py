"""End-to-end benchmark: metaprotocol against direct, native and Python proxies, side by side.

Run from the repository root with the project venv: ``python -m benchmarks.e2e`` (full, under
10 minutes) or ``python -m benchmarks.e2e --quick`` (under 2 minutes). Results go to
``benchmarks/results/latest.{md,json,png}``; docs/benchmarks.md explains the setup.
"""
