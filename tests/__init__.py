"""nbchat's tests: shared helpers live in :mod:`tests.helpers`, fixtures in ``conftest.py``."""
