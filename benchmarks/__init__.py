"""Benchmarks of metaprotocol (docs/benchmarks.md): scripts, and the end-to-end run in e2e/."""
