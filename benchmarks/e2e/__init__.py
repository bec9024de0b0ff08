"""End-to-end benchmark: metaprotocol against direct, native and Python proxies, side by side.

Run from the repository root with the project venv: ``python -m benchmarks.e2e --compiled
.venv-mypyc/bin/python`` (full, about 20-25 minutes on 2 quiet cores) or add ``--quick``.
Results go to ``benchmarks/results/latest.{md,json,png}``, the goals of issue 18 checked on
them (goals.py); docs/benchmarks.md explains the setup.
"""
