"""The evaluation tests use ``linear_gaussian`` from tests/conftest.py."""
