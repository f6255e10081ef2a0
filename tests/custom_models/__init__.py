"""A user's own model code, for the tests: a package a worker allows with
``--allow-code custom_models`` (the tests put ``tests/`` on its PYTHONPATH)."""
