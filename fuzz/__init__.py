"""Coverage-guided fuzzing (atheris) of every codec's decode, the config loader and the core.

Each module holds the harnesses of one target family; ``fuzz.run.TARGETS`` lists them and
``python -m fuzz.run`` runs them (docs/fuzzing.md). Harnesses are plain functions of one
``bytes`` input, importable without atheris, so the test suite replays their seeds too.
"""

from __future__ import annotations

__all__: list[str] = []
