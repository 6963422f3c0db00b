"""Durations and byte sizes as users write them ("2m", "1h", 90, "2GiB")."""

from __future__ import annotations

from dask.utils import parse_bytes, parse_timedelta


def seconds(value: str | int | float | None, *, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like '90s', '2m', '1h' or seconds, got {value!r}")
    if (isinstance(value, (int, float)) and value <= 0) or (
            isinstance(value, str) and value.strip().startswith("-")):
        raise ValueError(f"{field}: must be positive, got {value!r}")
    try:
        result = float(parse_timedelta(value, default="seconds"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{field}: {value!r} is not a duration; use e.g. '90s', '2m', '1h' or a number of seconds"
        ) from None
    if result <= 0:
        raise ValueError(f"{field}: must be positive, got {value!r}")
    return result


def nbytes(value: str | int | None, *, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a size like '2GiB', got {value!r}")
    try:
        result = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise ValueError(f"{field}: {value!r} is not a size; use e.g. '512MiB', '2GiB' or bytes") from None
    if result <= 0:
        raise ValueError(f"{field}: must be positive, got {value!r}")
    return result
