"""The differential suite: real backend parsers behind a real `keyscope serve` (see conftest.py).

A package, so that its conftest is `differential.conftest` and never shadows the `conftest` module of tests/,
which other test modules import by that name.
"""
