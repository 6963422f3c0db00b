"""Checks shared by the spec's fields (the cluster's and its worker groups')."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def string_mapping(v: Any, key_pattern: re.Pattern, key_word: str, bad_key: str) -> dict[str, str]:
    """{key: scalar} with valid keys; values become strings (env vars and labels are text)."""
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of {key_word}: value, got {type(v).__name__}")
    out = {}
    for k, val in v.items():
        if not isinstance(k, str) or not key_pattern.fullmatch(k):
            raise ValueError(f"{k!r} {bad_key}")
        if isinstance(val, (dict, list)) or val is None:
            raise ValueError(f"{k}: value must be a string or number, got {val!r}")
        out[k] = str(val)
    return out


def no_bool(v: Any) -> Any:
    # pydantic would turn True into 1 (one worker, one second, one byte): refuse it
    if isinstance(v, bool):
        raise ValueError(f"expected a number or a string, got {v!r}")
    return v


def env_mapping(v: Any) -> dict[str, str]:
    return string_mapping(v, ENV_NAME, "NAME", "is not a valid environment variable name")


# environment variables for worker processes, checked as they are given
EnvVars = Annotated[dict[str, str], BeforeValidator(env_mapping)]
