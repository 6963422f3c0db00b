"""The nightly ETL step: one day's raw bank-marketing drop -> validated, typed Parquet.

The payload is `run(source, dest, date, max_reject_ratio=0.05, blocksize="8MB")`, e.g.
`run(source="data/raw", dest="data/warehouse", date="2026-11-20")` on a job's cluster.

Extract   one day's drop: `source` is a folder holding `date=YYYY-MM-DD/` (as written by
          `daskjob demo-data`), or a glob/URL, optionally with `{date}` in it. CSV
          (';'- or ','-separated, header row) or Parquet. Any fsspec URL.
          The drop is split by bytes, not by file, so that every worker has work: an
          uncompressed CSV file into line-aligned byte ranges of about `blocksize`
          (equal ones per file), a compressed one whole, a Parquet file into runs of
          row groups of about `blocksize`. Each part is one task, read on a worker.
Validate  every row against SCHEMA (types, ranges, allowed values, required fields).
          Failing rows go to `dest/_rejected/date=D/` with one reason per rule they
          break, never into the output. More than `max_reject_ratio` rejected: the run
          fails (after keeping the rejected rows for inspection).
Transform typed columns, snake_case names, derived columns (age_band, call_minutes,
          contacted_before, subscribed), and a daily aggregate table by job.
Load      `dest/clients/date=D/` and `dest/daily_by_job/date=D/`, Parquet.

On the workers the work is Arrow-native: pyarrow.csv reads a part, every rule runs once
per distinct raw value of its column (pyarrow.compute on the column's dictionary, then a
take back to the rows), and pyarrow.parquet writes it. `validate`, `transform` and
`partial_aggregate` are the pandas reference implementation: `validate_arrow`,
`transform_arrow` and `partial_aggregate_arrow` give the same rows, values, reasons,
counts and Parquet schemas (tests/test_etl.py compares them).

Publishing is atomic and idempotent. Each table is written to a staging folder
`dest/<table>/_staging-date=D-<token>/` (readers skip names starting with `_`) and only
when every partition of every table is written, each staging folder replaces the
published `date=D/` folder: on a local/POSIX filesystem by an atomic exchange of the two
folders (renameat2 RENAME_EXCHANGE; two renames where that is missing), so a reader sees
the old partition or the new one, never a mix and never a partial one. A rerun for the
same date replaces the partition. A published partition holds `_SUCCESS` (a JSON
manifest: rows, files, run time). On object stores, where there is no rename, the
partition is replaced file by file and `_SUCCESS` is written last: readers there must
treat a partition without `_SUCCESS` as not committed. A killed run leaves only staging
folders, which the next run for that date removes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import functools
import io
import json
import logging
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dask.utils import parse_bytes
from fsspec.utils import read_block

import daskjob

log = logging.getLogger(__name__)


class RejectRatioExceeded(RuntimeError):
    """Too many rows failed validation: nothing was published but the rejected rows."""


# ------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class Column:
    kind: str                         # "int" | "float" | "category"
    output: str                       # name in the output table
    required: bool = True
    low: float | None = None
    high: float | None = None
    allowed: tuple[str, ...] = field(default_factory=tuple)


_YNU = ("no", "yes", "unknown")
SCHEMA: dict[str, Column] = {
    "age": Column("int", "age", low=17, high=100),
    "job": Column("category", "job", allowed=(
        "admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired",
        "self-employed", "services", "student", "technician", "unemployed", "unknown")),
    "marital": Column("category", "marital", allowed=("divorced", "married", "single", "unknown")),
    "education": Column("category", "education", allowed=(
        "basic.4y", "basic.6y", "basic.9y", "high.school", "illiterate",
        "professional.course", "university.degree", "unknown")),
    "default": Column("category", "default", allowed=_YNU),
    "housing": Column("category", "housing", allowed=_YNU),
    "loan": Column("category", "loan", allowed=_YNU),
    "contact": Column("category", "contact", allowed=("cellular", "telephone")),
    "month": Column("category", "month", allowed=(
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    "day_of_week": Column("category", "day_of_week", allowed=("mon", "tue", "wed", "thu", "fri")),
    "duration": Column("int", "duration_s", low=0, high=6000),
    "campaign": Column("int", "campaign", low=1, high=100),
    "pdays": Column("int", "pdays", low=0, high=999),
    "previous": Column("int", "previous", low=0, high=100),
    "poutcome": Column("category", "poutcome", allowed=("failure", "nonexistent", "success")),
    "emp.var.rate": Column("float", "emp_var_rate", low=-5, high=5),
    "cons.price.idx": Column("float", "cons_price_idx", low=80, high=110),
    "cons.conf.idx": Column("float", "cons_conf_idx", low=-80, high=0),
    "euribor3m": Column("float", "euribor3m", low=0, high=10),
    "nr.employed": Column("float", "nr_employed", low=4000, high=6000),
    "y": Column("category", "y", allowed=("no", "yes")),
}

OUTPUT_DTYPES: dict[str, str] = {
    **{c.output: ("int32" if c.kind == "int" else "float64" if c.kind == "float" else "str")
       for c in SCHEMA.values()},
    "age_band": "str", "call_minutes": "float64", "contacted_before": "bool",
    "subscribed": "bool",
}
# no `date` column in the files: it is the Hive partition (`date=D/`), which readers of
# the whole table get from the path
AGE_BANDS = [16, 24, 34, 44, 54, 64, 100]
AGE_LABELS = ["17-24", "25-34", "35-44", "45-54", "55-64", "65+"]
TABLES = ("clients", "daily_by_job", "_rejected")


_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _to_number(s: pd.Series) -> pd.Series:
    """Strings to float, NaN where not a number (pyarrow compute: ~10x pd.to_numeric)."""
    arr = pa.array(s, type=pa.string(), from_pandas=True)
    valid = pc.match_substring_regex(arr, _NUMBER)
    parsed = pc.cast(pc.if_else(valid, arr, pa.scalar(None, pa.string())), pa.float64())
    return pd.Series(parsed.to_numpy(zero_copy_only=False), index=s.index)


def validate(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Split raw rows (all strings) into typed good rows and rejected rows with reasons.

    Returns (good, rejected, rejected_by_rule). Every rejected row has a reason naming
    each rule it breaks, e.g. "age: out of range 17..100 ('150'); y: missing".
    """
    missing_cols = [c for c in SCHEMA if c not in raw.columns]
    if missing_cols:
        raise ValueError(f"input lacks columns {missing_cols} (has {list(raw.columns)})")
    reasons = pd.Series("", index=raw.index, dtype=object)
    by_rule: dict[str, int] = {}
    typed: dict[str, Any] = {}

    def fail(mask: pd.Series, col: str, rule: str, text: str, values: pd.Series | None) -> None:
        n = int(mask.sum())
        if not n:
            return
        by_rule[f"{col}:{rule}"] = by_rule.get(f"{col}:{rule}", 0) + n
        if values is None:
            reasons[mask] = reasons[mask] + f"{col}: {text}; "
        else:
            reasons[mask] = reasons[mask] + f"{col}: {text} ('" + values[mask].astype(str) + "'); "

    for col, rule in SCHEMA.items():
        s = raw[col].astype(str).str.strip()
        missing = s.eq("") | raw[col].isna()
        if rule.required:
            fail(missing, col, "missing", "missing", None)
        if rule.kind == "category":
            fail(~missing & ~s.isin(rule.allowed), col, "not_allowed",
                 f"not one of {len(rule.allowed)} allowed values", s)
            typed[rule.output] = s
            continue
        num = _to_number(s)
        fail(~missing & num.isna(), col, "not_a_number", "not a number", s)
        if rule.kind == "int":
            fail(num.notna() & (num % 1 != 0), col, "not_an_integer", "not an integer", s)
        out_of_range = num.notna() & ((num < rule.low) | (num > rule.high))
        fail(out_of_range, col, "out_of_range", f"out of range {rule.low:g}..{rule.high:g}", s)
        typed[rule.output] = num

    ok = reasons.eq("")
    good = pd.DataFrame({name: values[ok] for name, values in typed.items()})
    for name, dtype in OUTPUT_DTYPES.items():
        if name in good.columns:
            good[name] = good[name].astype(dtype)
    rejected = raw[~ok].astype(str).copy()
    rejected["reason"] = reasons[~ok].str.rstrip("; ")
    return good, rejected, by_rule


def transform(good: pd.DataFrame) -> pd.DataFrame:
    out = good.copy()
    out["age_band"] = pd.cut(out["age"], AGE_BANDS, labels=AGE_LABELS).astype(str)
    out["call_minutes"] = (out["duration_s"] / 60).round(2)
    out["contacted_before"] = out["pdays"] != 999
    out["subscribed"] = out["y"] == "yes"
    return out[list(OUTPUT_DTYPES)].astype(OUTPUT_DTYPES)


def partial_aggregate(clients: pd.DataFrame) -> pd.DataFrame:
    g = clients.groupby("job", observed=True)
    return pd.DataFrame({"clients": g.size(), "subscribed": g["subscribed"].sum(),
                         "age_sum": g["age"].sum(), "minutes_sum": g["call_minutes"].sum()})


def finish_aggregate(partials: pd.DataFrame) -> pd.DataFrame:
    total = partials.groupby(level=0).sum()
    out = pd.DataFrame({
        "job": total.index.astype(str), "clients": total["clients"].astype("int64"),
        "subscribed": total["subscribed"].astype("int64"),
        "subscription_rate": (total["subscribed"] / total["clients"]).round(4),
        "mean_age": (total["age_sum"] / total["clients"]).round(2),
        "mean_call_minutes": (total["minutes_sum"] / total["clients"]).round(3),
    }).reset_index(drop=True)
    return out.sort_values("job").reset_index(drop=True)


# ----------------------------------------------------------- Arrow-native, on the workers
# The same rules as `validate` / `transform` / `partial_aggregate` above, on Arrow tables.
# A column of a day's drop holds few distinct values (a dozen jobs, a hundred ages, a few
# thousand durations), so every rule runs once per distinct raw value of its column (the
# column's dictionary) and the results reach the rows by a take: the rows are hashed once
# per column, the rules cost next to nothing, and a column of all-distinct values is no
# slower than running the rules on the rows. Reasons are built for the rejected rows only.

@dataclass
class _CheckedColumn:
    indices: np.ndarray          # row -> entry of the column's dictionary
    bad: np.ndarray              # entry -> breaks a rule
    typed: pa.Array              # entry -> typed value (stripped string, float64, int32)
    reason: pa.Array | None      # entry -> this column's part of the reason ("" if none)


def _np_bool(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _check_column(values: pa.ChunkedArray | pa.Array, col: str, rule: Column,
                  by_rule: dict[str, int]) -> _CheckedColumn:
    """`validate`'s rules for one column, once per distinct raw value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = values.cast(pa.string())
    encoded = pc.dictionary_encode(values)
    entries = encoded.dictionary
    indices = encoded.indices
    if indices.null_count:  # a null raw value is an entry of its own, after the others
        indices = indices.fill_null(len(entries))
        entries = pa.concat_arrays([entries, pa.nulls(1, entries.type)])
    indices = indices.to_numpy(zero_copy_only=False)
    rows_per_entry = np.bincount(indices, minlength=len(entries))

    # as in validate: pandas' str.strip() on an Arrow-backed str column is this kernel
    s = pc.utf8_trim_whitespace(entries)
    missing = _np_bool(pc.or_kleene(pc.is_null(s), pc.equal(s, "")))
    bad = np.zeros(len(entries), dtype=bool)
    pieces: list[pa.Array] = []

    def fail(mask: np.ndarray, name: str, text: str, with_value: bool) -> None:
        n = int(rows_per_entry[mask].sum())
        if not n:
            return
        bad[mask] = True
        by_rule[f"{col}:{name}"] = by_rule.get(f"{col}:{name}", 0) + n
        if with_value:
            piece = pc.binary_join_element_wise(f"{col}: {text} ('", s, "'); ", "")
        else:
            piece = pa.scalar(f"{col}: {text}; ", s.type)
        pieces.append(pc.if_else(pa.array(mask), piece, pa.scalar("", s.type)))

    if rule.required:
        fail(missing, "missing", "missing", False)
    if rule.kind == "category":
        allowed = _np_bool(pc.is_in(s, value_set=pa.array(rule.allowed, s.type)))
        fail(~missing & ~allowed, "not_allowed", f"not one of {len(rule.allowed)} allowed values",
             True)
        typed: pa.Array = s
    else:
        valid = pc.match_substring_regex(s, _NUMBER)
        num = pc.cast(pc.if_else(valid, s, pa.scalar(None, s.type)), pa.float64())
        x = num.to_numpy(zero_copy_only=False)
        nan = np.isnan(x)
        fail(~missing & nan, "not_a_number", "not a number", True)
        with np.errstate(invalid="ignore"):
            if rule.kind == "int":
                fail(~nan & (np.remainder(x, 1) != 0), "not_an_integer", "not an integer", True)
            out_of_range = ~nan & ((x < rule.low) | (x > rule.high))
        fail(out_of_range, "out_of_range", f"out of range {rule.low:g}..{rule.high:g}", True)
        if rule.kind == "int":  # the entries the good rows can hold are whole and in range
            typed = pa.array(np.where(nan | bad, 0, x).astype(np.int32), mask=nan)
        else:
            typed = num
    reason = None
    if pieces:
        reason = pieces[0] if len(pieces) == 1 else pc.binary_join_element_wise(*pieces, "")
    return _CheckedColumn(indices, bad, typed, reason)


def validate_arrow(raw: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """`validate` on an Arrow table of raw strings: the same rows, values and reasons.

    Returns (good, rejected, rejected_by_rule): good holds the typed SCHEMA columns under
    their output names (strings stripped, int32, float64); rejected holds every raw
    column of the failing rows, as read, plus `reason`, in the Parquet schema that
    pandas gives `validate`'s rejected rows.
    """
    missing_cols = [c for c in SCHEMA if c not in raw.column_names]
    if missing_cols:
        raise ValueError(f"input lacks columns {missing_cols} (has {list(raw.column_names)})")
    by_rule: dict[str, int] = {}
    checked = {col: _check_column(raw.column(col), col, rule, by_rule)
               for col, rule in SCHEMA.items()}
    bad = np.zeros(raw.num_rows, dtype=bool)
    for c in checked.values():
        if c.bad.any():
            bad |= c.bad[c.indices]
    ok_rows = np.flatnonzero(~bad)
    good = pa.table({rule.output: checked[col].typed.take(pa.array(checked[col].indices[ok_rows]))
                     for col, rule in SCHEMA.items()})
    bad_rows = np.flatnonzero(bad)
    rejected = raw.take(pa.array(bad_rows))
    parts = [c.reason.take(pa.array(c.indices[bad_rows])) for c in checked.values()
             if c.reason is not None]
    if not parts:
        reason = pa.array([""] * len(bad_rows), pa.string())
    else:
        reason = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")
        reason = pc.utf8_rtrim(reason, characters="; ")
    names = tuple(raw.column_names)
    columns = {name: rejected.column(name) for name in names}
    columns["reason"] = reason
    schema = _rejected_schema(names)
    rejected = pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)
    return good, rejected, by_rule


def transform_arrow(good: pa.Table) -> pa.Table:
    """`transform` on `validate_arrow`'s good rows, in the Parquet schema pandas gives it."""
    age = good.column("age").to_numpy()
    band = np.searchsorted(AGE_BANDS, age, side="left") - 1  # pd.cut: (low, high] bins
    outside = (band < 0) | (band >= len(AGE_LABELS))
    age_band = pa.array(AGE_LABELS).take(pa.array(np.where(outside, 0, band), mask=outside))
    minutes = np.round(good.column("duration_s").to_numpy() / 60, 2)
    derived = {
        "age_band": age_band,
        "call_minutes": pa.array(minutes, pa.float64()),
        "contacted_before": pc.not_equal(good.column("pdays"), 999),
        "subscribed": pc.equal(good.column("y"), "yes"),
    }
    schema = _clients_schema()
    columns = [derived[f.name] if f.name in derived else good.column(f.name) for f in schema]
    return pa.table([c.cast(f.type) for c, f in zip(columns, schema)], schema=schema)


def partial_aggregate_arrow(clients: pa.Table) -> pd.DataFrame:
    """`partial_aggregate` on `transform_arrow`'s table: the same frame (by job, sorted),
    with int64 sums.

    `call_minutes` holds whole hundredths, so `minutes_sum` is summed exactly, in
    hundredths, and is the double nearest that sum: the value the pandas path's partial
    reached the driver with (its float sum, written as JSON with 10 decimals), whatever
    the order of the rows.
    """
    cents = np.rint(clients.column("call_minutes").to_numpy() * 100).astype(np.int64)
    g = (clients.select(["job", "subscribed", "age"]).append_column("cents", pa.array(cents))
         .group_by("job").aggregate([("job", "count"), ("subscribed", "sum"), ("age", "sum"),
                                     ("cents", "sum")]))
    out = pd.DataFrame({
        "clients": g.column("job_count").to_numpy().astype("int64"),
        "subscribed": g.column("subscribed_sum").to_numpy().astype("int64"),
        "age_sum": g.column("age_sum").to_numpy().astype("int64"),
        "minutes_sum": g.column("cents_sum").to_numpy() / 100,
    }, index=pd.Index(g.column("job").to_pylist(), name="job"))
    return out.sort_index()


# The Parquet schemas (types and pandas metadata) of what the pandas path writes, from
# pandas itself, once per process: the Arrow path writes files that read back the same.
@functools.cache
def _clients_schema() -> pa.Schema:
    empty = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in OUTPUT_DTYPES.items()})
    return pa.Schema.from_pandas(empty, preserve_index=False)


@functools.lru_cache(maxsize=64)
def _rejected_schema(names: tuple[str, ...]) -> pa.Schema:
    # validate: rejected = raw[~ok].astype(str); rejected["reason"] = <object strings>
    one = pd.DataFrame({n: pd.Series(["x"], dtype=object) for n in names}).astype(str)
    one["reason"] = pd.Series(["x"], dtype=object)
    return pa.Schema.from_pandas(one, preserve_index=False)


# --------------------------------------------------------------------- on the workers
def _write_parquet(fs, path: str, df: pd.DataFrame) -> int:
    with fs.open(path, "wb") as f:
        df.to_parquet(f, engine="pyarrow", index=False)
    return int(fs.size(path))


def _write_table(fs, path: str, table: pa.Table) -> int:
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="snappy")  # what pandas' to_parquet calls
    return int(fs.size(path))


def process_split(split: dict[str, Any], *, number: int, date: str,
                  staging: dict[str, str]) -> dict[str, Any]:
    """Read, validate, transform and write one part of the drop (a task on a worker);
    report what happened as an event. Returns the part's stats and partial aggregate."""
    raw = read_split(split)
    good, rejected, by_rule = validate_arrow(raw)
    clients = transform_arrow(good)
    fs, _ = fsspec.core.url_to_fs(staging["clients"])
    written = _write_table(fs, f"{staging['clients']}/part-{number:05d}.parquet", clients)
    if rejected.num_rows:
        written += _write_table(fs, f"{staging['_rejected']}/part-{number:05d}.parquet", rejected)
    stats = {"partition": number, "rows_read": raw.num_rows, "rows_rejected": rejected.num_rows,
             "rows_written": clients.num_rows, "bytes_written": written,
             "rejected_by_rule": by_rule}
    daskjob.event("etl.partition", **stats)
    log.info("partition %d: %d rows read, %d rejected, %d written", number, raw.num_rows,
             rejected.num_rows, clients.num_rows)
    agg = partial_aggregate_arrow(clients)
    del raw, good, rejected, clients
    _give_memory_back()
    return {"stats": stats, "agg": agg}


def process_partition(raw: pd.DataFrame, *, date: str, staging: dict[str, str],
                      partition_info: dict | None = None) -> pd.DataFrame:
    """The pandas path of one partition of `read_raw` (`raw.map_partitions(...)`):
    validate, transform and write it; report what happened as an event. `run` uses the
    Arrow path, `process_split`."""
    number = partition_info["number"] if partition_info else 0
    good, rejected, by_rule = validate(raw)
    clients = transform(good)
    fs, _ = fsspec.core.url_to_fs(staging["clients"])
    written = _write_parquet(fs, f"{staging['clients']}/part-{number:05d}.parquet", clients)
    if len(rejected):
        written += _write_parquet(fs, f"{staging['_rejected']}/part-{number:05d}.parquet", rejected)
    stats = {"partition": number, "rows_read": len(raw), "rows_rejected": len(rejected),
             "rows_written": len(clients), "bytes_written": written,
             "rejected_by_rule": by_rule}
    daskjob.event("etl.partition", **stats)
    log.info("partition %d: %d rows read, %d rejected, %d written", number, len(raw),
             len(rejected), len(clients))
    agg = partial_aggregate(clients)
    out = pd.DataFrame({"stats": [json.dumps(stats)],
                        "agg": [agg.reset_index().to_json(orient="records")]})
    del raw, good, rejected, clients
    _give_memory_back()
    return out


def _give_memory_back() -> None:
    """Return freed memory to the OS after each partition.

    Arrow's allocator and glibc keep freed pages; on a worker whose memory limit is tight,
    that "unmanaged" memory creeps past the pause threshold and the worker stops taking
    tasks. Trimming keeps a streaming ETL flat however large the input.
    """
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


# ----------------------------------------------------------------------------- driver
def find_inputs(source: str, date: str) -> tuple[list[str], str, Any]:
    """The day's input files and their format."""
    pattern = source.replace("{date}", date)
    fs, root = fsspec.core.url_to_fs(pattern)
    if not any(ch in root for ch in "*?[") and fs.isdir(root):
        day = f"{root.rstrip('/')}/date={date}"
        root = f"{day}/*" if fs.isdir(day) else f"{root.rstrip('/')}/*"
    files = sorted(p for p in fs.glob(root) if not os.path.basename(p).startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"no input for {date}: nothing matches {pattern!r} "
                                f"(looked for {root})")
    kinds = {_kind(p) for p in files}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"input for {date} must be all CSV or all Parquet, found {sorted(map(str, kinds))}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    urls = files if protocol in ("file", "local") else [f"{protocol}://{p}" for p in files]
    return urls, kinds.pop(), fs


def _kind(path: str) -> str | None:
    name = path.lower()
    if re.search(r"\.csv(\.gz|\.bz2|\.zst)?$", name):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    return None


def _sniff_sep(fs, path: str) -> str:
    with fs.open(path, "rt", compression="infer") as f:
        header = f.readline()
    return ";" if header.count(";") > header.count(",") else ","


def read_raw(urls: list[str], kind: str, fs, blocksize: str) -> dd.DataFrame:
    """The drop as a dask DataFrame of strings (the pandas path; `run` uses `plan_splits`
    and `read_split`)."""
    if kind == "csv":
        return dd.read_csv(urls, sep=_sniff_sep(fs, urls[0]), dtype=str, keep_default_na=False,
                           blocksize=None if urls[0].endswith((".gz", ".bz2", ".zst")) else blocksize)
    return dd.read_parquet(urls).astype(str)


def plan_splits(urls: list[str], kind: str, fs, blocksize: str | int | None) -> list[dict[str, Any]]:
    """The parts of a drop, one task each, by size: an uncompressed CSV file in equal
    byte ranges of at most `blocksize` (a worker moves each end to the next line), a
    compressed one whole, a Parquet file in runs of row groups of about `blocksize`
    (uncompressed). `blocksize=None`: one part per file."""
    limit = parse_bytes(blocksize) if isinstance(blocksize, str) else blocksize
    if limit is not None and limit < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize!r}")
    splits: list[dict[str, Any]] = []
    if kind == "csv":
        # the first file's header line names the columns of every file (as dd.read_csv)
        with fs.open(urls[0], "rb", compression="infer") as f:
            header = f.readline()
        common = {"kind": "csv", "header": header,
               "sep": ";" if header.count(b";") > header.count(b",") else ","}
        for url in urls:
            if limit is None or url.lower().endswith((".gz", ".bz2", ".zst")):
                splits.append({**common, "url": url, "offset": 0, "length": None})
                continue
            size = fs.size(url)
            n = max(1, math.ceil(size / limit))
            step = math.ceil(size / n)
            splits += [{**common, "url": url, "offset": i * step, "length": step}
                       for i in range(n)]
        return splits
    columns: list[str] | None = None  # the first file's, for every file (as dd.read_parquet)
    for url in urls:
        with fs.open(url, "rb") as f:
            pfile = pq.ParquetFile(f)
            meta = pfile.metadata
            if columns is None:
                columns = _parquet_columns(pfile.schema_arrow)
        groups: list[list[int]] = [[]]
        size = 0
        for i in range(meta.num_row_groups):
            rg_size = meta.row_group(i).total_byte_size
            if groups[-1] and limit is not None and size + rg_size > limit:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += rg_size
        splits += [{"kind": "parquet", "url": url, "row_groups": g, "columns": columns}
                   for g in groups]
    return splits


def read_split(split: dict[str, Any]) -> pa.Table:
    """One part of the drop as an Arrow table of strings: the rows and values that the
    pandas path (`read_raw`) gives those rows."""
    fs, path = fsspec.core.url_to_fs(split["url"])
    if split["kind"] == "parquet":
        with fs.open(path, "rb") as f:
            pfile = pq.ParquetFile(f)
            groups = split["row_groups"]
            table = (pfile.read_row_groups(groups, use_threads=False) if groups
                     else pfile.schema_arrow.empty_table())
        return _strings_from_parquet(table, split["columns"])
    with fs.open(path, "rb", compression="infer") as f:
        if split["length"] is None:
            data = f.read()
        else:
            data = read_block(f, split["offset"], split["length"], b"\n")
    if split["offset"] == 0:  # the file's header line
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return parse_csv(split["header"], data, split["sep"])


def parse_csv(header: bytes, data: bytes, sep: str) -> pa.Table:
    """CSV lines (`data`, without the header line) as an Arrow table of strings, read as
    `pd.read_csv(..., sep=sep, dtype=str, keep_default_na=False)` reads header + data."""
    names = _csv_names(header, sep)
    try:
        return pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=list(names), use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    except pa.ArrowInvalid:
        # what pyarrow's parser refuses and pandas reads (short rows, lines of blanks,
        # no rows at all, ...): pandas, as the pandas path does, so that nothing changes
        df = pd.read_csv(io.BytesIO(header + data), sep=sep, dtype=str, keep_default_na=False)
        table = pa.Table.from_pandas(df, preserve_index=False)
        return pa.table([c.cast(pa.string()) for c in table.columns], names=table.column_names)


@functools.lru_cache(maxsize=256)
def _csv_names(header: bytes, sep: str) -> tuple[str, ...]:
    # pandas' own names for the header (a BOM dropped, duplicates renamed "a.1", ...)
    return tuple(str(c) for c in pd.read_csv(io.BytesIO(header), sep=sep, dtype=str, nrows=0).columns)


def _parquet_columns(schema: pa.Schema) -> list[str]:
    """The data columns of a Parquet file (not those holding a pandas index)."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    return [n for n in schema.names if n not in {i for i in index if isinstance(i, str)}]


def _strings_from_parquet(table: pa.Table, columns: list[str]) -> pa.Table:
    """`columns` of a Parquet table as the strings `dd.read_parquet(...).astype(str)`
    gives: nulls stay null, a column the file lacks is all null; strings and whole
    numbers in Arrow, anything else through pandas' str(). (Unlike dd.read_parquet, no
    `date` column from a `date=D/` folder: it is no column of the drop.)"""
    out: dict[str, Any] = {}
    through_pandas = []
    for name in columns:
        if name not in table.column_names:
            out[name] = pa.nulls(table.num_rows, pa.string())
            continue
        col = table.column(name)
        t = col.type
        if pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or
                                          pa.types.is_large_string(t.value_type)):
            col = col.cast(t.value_type)
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or \
                (pa.types.is_integer(t) and col.null_count == 0):  # str(int) is Arrow's cast
            out[name] = col.cast(pa.string())
        else:
            through_pandas.append(name)
    if through_pandas:  # with the file's pandas metadata, as dask converts it (Int64, ...)
        df = table.select(through_pandas).to_pandas()
        for name in through_pandas:
            out[name] = pa.array(df[name].astype(str), type=pa.string(), from_pandas=True)
    return pa.table([out[name] for name in columns], names=columns)


class Publisher:
    """Staging folders per table, and the atomic swap into `date=D/`."""

    def __init__(self, dest: str, date: str):
        self.fs, self.root = fsspec.core.url_to_fs(dest)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = protocol in ("file", "local")
        self.prefix = "" if self.local else f"{protocol}://"
        self.date = date
        self.token = uuid.uuid4().hex[:8]

    def final(self, table: str) -> str:
        return f"{self.root}/{table}/date={self.date}"

    def staging(self, table: str) -> str:
        return f"{self.root}/{table}/_staging-date={self.date}-{self.token}"

    def prepare(self) -> dict[str, str]:
        """Remove what killed runs left for this date; create fresh staging folders."""
        out = {}
        for table in TABLES:
            parent = f"{self.root}/{table}"
            self.fs.makedirs(parent, exist_ok=True)
            for stale in self.fs.glob(f"{parent}/_staging-date={self.date}-*") + \
                    self.fs.glob(f"{parent}/_old-date={self.date}-*"):
                self.fs.rm(stale, recursive=True)
            self.fs.makedirs(self.staging(table), exist_ok=True)
            out[table] = self.prefix + self.staging(table)
        return out

    def publish(self, table: str, manifest: dict[str, Any]) -> str:
        staging, final = self.staging(table), self.final(table)
        files = sorted(os.path.basename(p) for p in self.fs.ls(staging, detail=False))
        manifest = {**manifest, "table": table, "files": files}
        with self.fs.open(f"{staging}/_SUCCESS", "w") as f:
            json.dump(manifest, f, indent=2, default=str)
        if self.local:
            _swap_dirs(staging, final)
            # after the exchange, the staging name holds the previous partition (if any)
            if os.path.exists(staging):
                self.fs.rm(staging, recursive=True)
        else:
            if self.fs.exists(final):
                self.fs.rm(final, recursive=True)
            for name in files:
                self.fs.copy(f"{staging}/{name}", f"{final}/{name}")
            self.fs.copy(f"{staging}/_SUCCESS", f"{final}/_SUCCESS")  # last: now committed
            self.fs.rm(staging, recursive=True)
        return self.prefix + final

    def discard(self) -> None:
        for table in TABLES:
            if self.fs.exists(self.staging(table)):
                self.fs.rm(self.staging(table), recursive=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _swap_dirs(new: str, final: str) -> None:
    """Make `new` visible as `final` in one step; the old `final` ends up at `new`."""
    if os.path.exists(final):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            if renameat2(_AT_FDCWD, new.encode(), _AT_FDCWD, final.encode(), _RENAME_EXCHANGE) == 0:
                return
        # no atomic exchange here: two renames, the gap is one syscall wide
        old = f"{os.path.dirname(final)}/_old-{os.path.basename(final)}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(new, final)
        os.rename(old, new)
        return
    os.rename(new, final)


def run(source: str, dest: str, date: str, *, max_reject_ratio: float = 0.05,
        blocksize: str | int | None = "8MB") -> dict[str, Any]:
    """Run the ETL step for one day. Returns the summary (also emitted as `etl.summary`)."""
    dt.date.fromisoformat(date)
    if not 0 <= max_reject_ratio <= 1:
        raise ValueError(f"max_reject_ratio must be within 0..1, got {max_reject_ratio}")
    started = time.time()
    urls, kind, fs = find_inputs(source, date)
    splits = plan_splits(urls, kind, fs, blocksize)
    publisher = Publisher(dest, date)
    staging = publisher.prepare()
    try:
        # one task per part, on the job's cluster (the payload's default client)
        tasks = [dask.delayed(process_split, pure=False)(
                    split, number=i, date=date, staging=staging,
                    dask_key_name=f"etl-part-{publisher.token}-{i:05d}")
                 for i, split in enumerate(splits)]
        results = dask.compute(*tasks)
        stats = [r["stats"] for r in results]
        partials = [r["agg"] for r in results if len(r["agg"])]
        summary = _summarise(stats, date, len(urls))
        if summary["reject_ratio"] > max_reject_ratio:
            tables = {"_rejected": publisher.publish("_rejected", _manifest(summary, started))}
            raise RejectRatioExceeded(
                f"{summary['rows_rejected']} of {summary['rows_read']} rows rejected "
                f"({summary['reject_ratio']:.2%} > max_reject_ratio {max_reject_ratio:.2%}); "
                f"nothing published but the rejected rows: {tables['_rejected']}; "
                f"by rule: {summary['rejected_by_rule']}")
        agg = finish_aggregate(pd.concat(partials) if partials else
                               pd.DataFrame(columns=["clients", "subscribed", "age_sum", "minutes_sum"]))
        agg_bytes = _write_parquet(publisher.fs, f"{publisher.staging('daily_by_job')}/part-00000.parquet", agg)
        summary["bytes_written"] += agg_bytes
        manifest = _manifest(summary, started)
        summary["tables"] = {t: publisher.publish(t, manifest) for t in TABLES}
    except BaseException:
        publisher.discard()
        raise
    for table, path in summary["tables"].items():
        daskjob.event("etl.committed", table=table, path=path, date=date)
    daskjob.event("etl.summary", **{k: v for k, v in summary.items() if k != "tables"})
    return summary


def _summarise(stats: list[dict], date: str, files: int) -> dict[str, Any]:
    by_rule: dict[str, int] = {}
    for s in stats:
        for rule, n in s["rejected_by_rule"].items():
            by_rule[rule] = by_rule.get(rule, 0) + n
    read = sum(s["rows_read"] for s in stats)
    rejected = sum(s["rows_rejected"] for s in stats)
    return {"date": date, "files": files, "partitions": len(stats), "rows_read": read,
            "rows_rejected": rejected, "rows_written": sum(s["rows_written"] for s in stats),
            "bytes_written": sum(s["bytes_written"] for s in stats),
            "reject_ratio": round(rejected / read, 6) if read else 0.0,
            "rejected_by_rule": dict(sorted(by_rule.items(), key=lambda kv: -kv[1]))}


def _manifest(summary: dict[str, Any], started: float) -> dict[str, Any]:
    return {"date": summary["date"], "rows_read": summary["rows_read"],
            "rows_written": summary["rows_written"], "rows_rejected": summary["rows_rejected"],
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "run_seconds": round(time.time() - started, 3),
            "run_id": os.environ.get("DASKJOB_RUN_ID", "")}
