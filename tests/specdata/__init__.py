"""Helper files for tests/test_spec.py."""
