"""Label and field selectors, as the API server parses them from query strings."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]

# one requirement of a label selector: "k in (a,b)", "k notin (a)", "k!=v", "k=v", "k==v",
# "!k", "k"; commas inside parentheses belong to the set
_TERM = re.compile(r"\s*([^,(]+?\([^)]*\)|[^,]+)\s*(?:,|$)")
_SET = re.compile(r"^(\S+)\s+(in|notin)\s+\((.*)\)$")


class SelectorError(ValueError):
    pass


def _terms(text: str) -> list[str]:
    return [t.strip() for t in _TERM.findall(text or "") if t.strip()]


def _label_term(term: str) -> Matcher:
    m = _SET.match(term)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[A-Za-z0-9_./-]+", term):
        return lambda labels: term in labels
    raise SelectorError(f"unable to parse requirement: {term!r}")


def label_matcher(text: str | None) -> Matcher:
    """A function of an object's labels, True when they match `text`."""
    tests = [_label_term(t) for t in _terms(text or "")]
    return lambda labels: all(t(labels or {}) for t in tests)


def _field(obj: dict[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return None if value is None else str(value)


def field_matcher(text: str | None) -> Matcher:
    """A function of a whole object, True when its fields match `text` (`=`, `==`, `!=`;
    empty terms, as kr8s sends them, are ignored)."""
    tests = []
    for term in _terms(text or ""):
        op = "!=" if "!=" in term else "==" if "==" in term else "="
        if op not in term:
            raise SelectorError(f"invalid field selector: {term!r}")
        path, value = (s.strip() for s in term.split(op, 1))
        if op == "!=":
            tests.append(lambda o, p=path, v=value: (_field(o, p) or "") != v)
        else:
            tests.append(lambda o, p=path, v=value: (_field(o, p) or "") == v)
    return lambda obj: all(t(obj) for t in tests)


def object_matcher(label_selector: str | None, field_selector: str | None) -> Matcher:
    labels, fields = label_matcher(label_selector), field_matcher(field_selector)
    return lambda obj: labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj)


def match_labels(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's or Deployment's equality selector (an empty one matches nothing, as
    a Service without selector has no endpoints)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
