"""A script payload used by tests/test_spec.py (only its existence matters)."""

if __name__ == "__main__":
    print("hello")
