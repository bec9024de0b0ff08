"""``python -m benchmarks.e2e``: run the end-to-end benchmark (see ``run.py``)."""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
