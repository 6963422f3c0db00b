"""Synthetic bank-marketing data: daily CSV drops shaped like the UCI dataset.

THE DATA IS SYNTHETIC. There is no network access to fetch the UCI "Bank Marketing"
dataset (bank-additional-full.csv) and no package ships it, so this module generates
rows with the same 21 columns, the same value sets, plausible distributions, and a
target `y` that depends on the features (call duration, previous outcome, euribor,
contact type, month, age) the way the real one does. A small, tunable share of rows is
malformed (bad types, out-of-range values, missing required fields, unknown categories)
so that validation has real work to do.

Generation is deterministic: the same (seed, date, rows) always gives the same file.

    daskjob demo-data --dest data/raw --date 2026-11-20 --rows 100000
    -> data/raw/date=2026-11-20/bank-2026-11-20-000.csv   (';'-separated, header row)
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Iterator

import fsspec
import numpy as np
import pandas as pd

COLUMNS = [
    "age", "job", "marital", "education", "default", "housing", "loan", "contact",
    "month", "day_of_week", "duration", "campaign", "pdays", "previous", "poutcome",
    "emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed", "y",
]

JOBS = ["admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired",
        "self-employed", "services", "student", "technician", "unemployed", "unknown"]
JOB_P = [.253, .225, .035, .026, .071, .042, .035, .096, .021, .164, .025, .007]
MARITAL = ["divorced", "married", "single", "unknown"]
MARITAL_P = [.112, .605, .281, .002]
EDUCATION = ["basic.4y", "basic.6y", "basic.9y", "high.school", "illiterate",
             "professional.course", "university.degree", "unknown"]
EDUCATION_P = [.101, .056, .147, .231, .0005, .127, .2955, .042]
YES_NO_UNKNOWN = ["no", "yes", "unknown"]
CONTACT = ["cellular", "telephone"]
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["mon", "tue", "wed", "thu", "fri"]
POUTCOME = ["failure", "nonexistent", "success"]

ROWS_PER_FILE = 250_000


def _rng(seed: int, date: str, chunk: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{date}:{chunk}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def generate_chunk(rows: int, *, date: str, seed: int = 0, chunk: int = 0,
                   bad_fraction: float = 0.02) -> pd.DataFrame:
    """`rows` rows as the CSV would hold them (strings for everything malformed)."""
    r = _rng(seed, date, chunk)
    day = dt.date.fromisoformat(date)
    age = np.clip(np.round(r.gamma(9.0, 4.4, rows) + 2), 17, 98).astype(int)
    job = r.choice(JOBS, rows, p=np.array(JOB_P) / sum(JOB_P))
    job = np.where(age > 62, np.where(r.random(rows) < .6, "retired", job), job)
    job = np.where(age < 24, np.where(r.random(rows) < .4, "student", job), job)
    marital = r.choice(MARITAL, rows, p=MARITAL_P)
    education = r.choice(EDUCATION, rows, p=np.array(EDUCATION_P) / sum(EDUCATION_P))
    default = r.choice(YES_NO_UNKNOWN, rows, p=[.79, .0001, .2099])
    housing = r.choice(YES_NO_UNKNOWN, rows, p=[.452, .524, .024])
    loan = r.choice(YES_NO_UNKNOWN, rows, p=[.824, .152, .024])
    contact = r.choice(CONTACT, rows, p=[.635, .365])
    month = np.full(rows, MONTHS[day.month - 1])
    day_of_week = np.full(rows, DAYS[min(day.weekday(), 4)])
    duration = np.clip(np.round(r.lognormal(5.2, 0.85, rows)), 0, 4918).astype(int)  # UCI max
    campaign = np.clip(r.geometric(0.42, rows), 1, 56)
    contacted = r.random(rows) < 0.037
    pdays = np.where(contacted, r.integers(0, 27, rows), 999)
    previous = np.where(contacted, r.integers(1, 7, rows), np.where(r.random(rows) < .1, 1, 0))
    poutcome = np.where(previous == 0, "nonexistent",
                        np.where(r.random(rows) < np.where(contacted, .65, .1), "success", "failure"))
    # the economy of the day: the same for every row of a drop, drifting day to day
    econ = _rng(seed, date, -1)
    emp_var_rate = round(float(econ.choice([-3.4, -2.9, -1.8, -1.1, -0.1, 1.1, 1.4])), 1)
    cons_price_idx = round(float(econ.uniform(92.2, 94.8)), 3)
    cons_conf_idx = round(float(econ.uniform(-50.8, -26.9)), 1)
    euribor3m = round(float(np.clip(1.9 + 1.1 * emp_var_rate + econ.normal(0, .3), .63, 5.05)), 3)
    nr_employed = round(float(5100 + 40 * emp_var_rate + econ.normal(0, 15)), 1)

    # the target: longer calls, earlier success, cheap money and mobiles help
    logit = (-3.2 + 0.0042 * (duration - 250) + 1.9 * (poutcome == "success")
             - 0.35 * (euribor3m - 3.0) + 0.35 * (contact == "cellular")
             - 0.08 * (campaign - 1) + 0.6 * ((age < 25) | (age > 60))
             + 0.3 * np.isin(job, ["student", "retired"]))
    y = np.where(r.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")

    df = pd.DataFrame({
        "age": age, "job": job, "marital": marital, "education": education,
        "default": default, "housing": housing, "loan": loan, "contact": contact,
        "month": month, "day_of_week": day_of_week, "duration": duration,
        "campaign": campaign, "pdays": pdays, "previous": previous, "poutcome": poutcome,
        "emp.var.rate": emp_var_rate, "cons.price.idx": cons_price_idx,
        "cons.conf.idx": cons_conf_idx, "euribor3m": euribor3m,
        "nr.employed": nr_employed, "y": y,
    })
    return _corrupt(df, r, bad_fraction)


# (column, value) pairs that break one rule each
_CORRUPTIONS = [
    ("age", "abc"), ("age", "150"), ("age", "-3"), ("duration", "n/a"), ("duration", "-20"),
    ("campaign", "0"), ("job", ""), ("marital", "widowed?"), ("education", "phd"),
    ("y", ""), ("y", "maybe"), ("contact", ""), ("euribor3m", "high"), ("pdays", "1.5e9"),
]


def _corrupt(df: pd.DataFrame, r: np.random.Generator, bad_fraction: float) -> pd.DataFrame:
    if bad_fraction <= 0:
        return df
    n_bad = int(round(len(df) * bad_fraction))
    if n_bad == 0:
        return df
    rows = r.choice(len(df), n_bad, replace=False)
    kinds = r.integers(0, len(_CORRUPTIONS), n_bad)
    df = df.astype({c: object for c in {c for c, _ in _CORRUPTIONS}})
    for kind in np.unique(kinds):
        column, value = _CORRUPTIONS[kind]
        df.iloc[rows[kinds == kind], df.columns.get_loc(column)] = value
    return df


def drop_path(dest: str, date: str) -> str:
    """Folder of one day's drop; the ETL's `source` finds it as `<dest>/date=<date>/`."""
    return f"{dest.rstrip('/')}/date={date}"


def iter_chunks(rows: int, *, date: str, seed: int = 0, bad_fraction: float = 0.02,
                rows_per_file: int = ROWS_PER_FILE) -> Iterator[pd.DataFrame]:
    for chunk, start in enumerate(range(0, rows, rows_per_file)):
        yield generate_chunk(min(rows_per_file, rows - start), date=date, seed=seed,
                             chunk=chunk, bad_fraction=bad_fraction)


def write_drop(dest: str, date: str, rows: int, *, seed: int = 0, bad_fraction: float = 0.02,
               rows_per_file: int = ROWS_PER_FILE) -> list[str]:
    """Write one day's drop in the UCI CSV format (';'-separated, quoted strings, header)."""
    dt.date.fromisoformat(date)
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if not 0 <= bad_fraction < 1:
        raise ValueError("bad_fraction must be in [0, 1)")
    folder = drop_path(dest, date)
    fs, root = fsspec.core.url_to_fs(folder)
    if fs.exists(root):
        fs.rm(root, recursive=True)  # a drop is replaced whole, never appended to
    fs.makedirs(root, exist_ok=True)
    paths = []
    for i, chunk in enumerate(iter_chunks(rows, date=date, seed=seed, bad_fraction=bad_fraction,
                                          rows_per_file=rows_per_file)):
        path = f"{root}/bank-{date}-{i:03d}.csv"
        with fs.open(path, "w") as f:
            chunk.to_csv(f, sep=";", index=False, quoting=2)  # csv.QUOTE_NONNUMERIC, as UCI
        paths.append(path)
    return paths
