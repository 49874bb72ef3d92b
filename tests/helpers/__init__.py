"""Helpers shared by the tests (importable as ``helpers``: pytest's ``pythonpath`` puts tests/ on the path)."""
