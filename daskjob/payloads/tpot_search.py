"""AutoML on the job's cluster: a TPOT 1.x search over a small, CPU-friendly space.

The payload is `run(data, target, output, ...)`, e.g.
`run(data="data/warehouse/clients/", target="y", output="models/2026-11-20")`.

Load      `data`: any fsspec URL/path of a CSV file (',' or ';' separated, detected from
          the header line; compression inferred) or Parquet (a `.parquet` file, or a
          folder of them such as an ETL output; hive `key=value/` folders become columns,
          names starting with `_` or `.` are skipped). Loaded into the driver: small data.
Encode    the target with a LabelEncoder (classification); the features with a
          ColumnTransformer: numeric -> SimpleImputer(median); booleans -> 0/1;
          everything else (strings, categories) -> SimpleImputer(most_frequent) +
          OneHotEncoder(handle_unknown="ignore"). Fitted on the training part only.
Split     a holdout (`test_size`, stratified for classification) that the search never sees.
Search    TPOTClassifier / TPOTRegressor with `client=` the job's Dask client, so every
          pipeline evaluation is a task on the job's workers and TPOT never starts a
          LocalCluster of its own. TPOT changes the global dask config when it is built
          (worker-ttl, allowed-failures): the whole `dask.config.config` is snapshotted
          before and restored afterwards, on every path.
Observe   a driver thread reads TPOT's evaluated-individuals table while `fit` runs and
          emits `tpot.progress` {evaluated, failed, best_score, generation, elapsed_s}
          whenever it changes (TPOT fills the table once per generation), rewriting
          `leaderboard.csv` each time, so a search stopped by the job timeout still leaves
          what it evaluated. `tpot.started` and `tpot.done` frame the search.
Write     to `output` (fsspec folder): `pipeline.joblib` (ONE sklearn Pipeline:
          preprocessing + the best TPOT pipeline; `joblib.load(...).predict(raw_rows)`
          takes rows as read from the data, and returns encoded class indices - the
          classes are in `best_pipeline.txt` and in the result), `leaderboard.csv` (every
          evaluated pipeline, best first) and `best_pipeline.txt`.

The saved pipeline holds TPOT's own small helper classes (e.g. `Passthrough`), so
loading it needs `tpot` installed (the `daskjob[tpot]` extra).
"""

from __future__ import annotations

import copy
import io
import math
import threading
import time
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from ..observe import event

DEFAULT_SCORING = {"classification": "accuracy", "regression": "r2"}

# The "small" search space: scaler -> feature selector -> one fast estimator. Everything
# in it fits breast-cancer-sized data (hundreds to thousands of rows) in well under a
# second per CV fold. LogisticRegression is our own node (lbfgs, C, class_weight):
# TPOT's (saga, max_iter=1000, `penalty`/`n_jobs`, both deprecated in scikit-learn 1.8+)
# is ~2x slower and rarely converges on unscaled features.
SMALL_CLASSIFIERS = ["DecisionTreeClassifier", "KNeighborsClassifier", "GaussianNB", "BernoulliNB"]
SMALL_REGRESSORS = ["RidgeCV", "LassoLarsCV", "KNeighborsRegressor", "DecisionTreeRegressor"]
# (ElasticNetCV as TPOT configures it, l1_ratio from 0, fails on scikit-learn 1.9.)
SMALL_SELECTORS = ["SelectFwe", "SelectPercentile", "VarianceThreshold", "Passthrough"]
SMALL_SCALERS = ["StandardScaler", "MinMaxScaler", "RobustScaler", "MaxAbsScaler", "Passthrough"]

PROGRESS_EVERY_S = 0.5


# ----------------------------------------------------------------------------- loading
def _fs_path(url: str):
    return fsspec.core.url_to_fs(str(url))


def load_table(data: str) -> pd.DataFrame:
    """CSV (sep ',' or ';') or Parquet (file or folder) from any fsspec URL."""
    fs, path = _fs_path(data)
    low = path.lower().rstrip("/")
    is_dir = fs.isdir(path)
    if is_dir or low.endswith(".parquet") or low.endswith(".pq"):
        import pyarrow.dataset as ds
        try:
            dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
            table = dataset.to_table()
        except Exception:  # a hive key clashing with a column of the files: ignore keys
            table = ds.dataset(path, filesystem=fs, format="parquet").to_table()
        return table.to_pandas()
    with fs.open(path, "rb", compression="infer") as f:
        raw = f.read()
    first = raw.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    sep = ";" if ";" in first else ","
    return pd.read_csv(io.BytesIO(raw), sep=sep)


# ----------------------------------------------------------------------------- encoding
def split_columns(X: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Numeric, boolean and categorical (strings, categories, objects) feature columns.
    Datetime columns are not features this payload knows how to use: left out."""
    numeric, boolean, categorical = [], [], []
    for col in X.columns:
        dt = X[col].dtype
        if pd.api.types.is_bool_dtype(dt):
            boolean.append(col)
        elif pd.api.types.is_numeric_dtype(dt):
            numeric.append(col)
        elif pd.api.types.is_datetime64_any_dtype(dt) or pd.api.types.is_timedelta64_dtype(dt):
            continue
        else:
            categorical.append(col)
    return numeric, boolean, categorical


def make_preprocessor(numeric: list[str], boolean: list[str], categorical: list[str]):
    """numeric -> median imputation; boolean -> 0/1 (+ most frequent); categorical ->
    most frequent + one-hot (unknown categories at predict time: all zeros). Only sklearn
    and numpy objects, so the saved pipeline loads without daskjob."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    parts = []
    if numeric:
        parts.append(("num", SimpleImputer(strategy="median"), numeric))
    if boolean:  # SimpleImputer refuses bool arrays
        parts.append(("bool", Pipeline([
            ("to_float", FunctionTransformer(np.asarray, kw_args={"dtype": np.float64},
                                             feature_names_out="one-to-one")),
            ("impute", SimpleImputer(strategy="most_frequent")),
        ]), boolean))
    if categorical:
        parts.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]), categorical))
    if not parts:
        raise ValueError("no usable feature columns (numeric or categorical) in the data")
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


# ----------------------------------------------------------------------------- TPOT glue
def small_search_space(classification: bool, n_classes: int | None, n_samples: int,
                       n_features: int, random_state):
    from ConfigSpace import Categorical, ConfigurationSpace, Float
    from sklearn.linear_model import LogisticRegression
    from tpot.config import get_search_space
    from tpot.search_spaces.nodes import EstimatorNode
    from tpot.search_spaces.pipelines import ChoicePipeline, SequentialPipeline

    params = {"n_classes": n_classes or 2, "n_samples": n_samples, "n_features": n_features,
              "random_state": random_state}
    if classification:
        lr = {"solver": "lbfgs", "max_iter": 300,
              "C": Float("C", (1e-3, 1e3), log=True),
              "class_weight": Categorical("class_weight", [None, "balanced"])}
        if random_state is not None:
            lr["random_state"] = random_state
        estimators = ChoicePipeline([
            EstimatorNode(LogisticRegression, ConfigurationSpace(space=lr)),
            *get_search_space(SMALL_CLASSIFIERS, return_choice_pipeline=False, **params),
        ])
        selectors = get_search_space(SMALL_SELECTORS, **params)
    else:
        estimators = get_search_space(SMALL_REGRESSORS, **params)
        # TPOT's SelectFwe/SelectPercentile score with f_classif: wrong for a numeric target
        from sklearn.feature_selection import SelectFwe, SelectPercentile
        from tpot.config.selectors import SelectFwe_configspace, SelectPercentile_configspace
        selectors = ChoicePipeline([
            EstimatorNode(SelectFwe, SelectFwe_configspace, hyperparameter_parser=_f_regression),
            EstimatorNode(SelectPercentile, SelectPercentile_configspace,
                          hyperparameter_parser=_f_regression),
            *get_search_space(["VarianceThreshold", "Passthrough"], return_choice_pipeline=False,
                              **params),
        ])
    return SequentialPipeline(search_spaces=[
        get_search_space(SMALL_SCALERS, **params),
        selectors,
        estimators,
    ])


def _f_regression(params: dict) -> dict:
    from sklearn.feature_selection import f_regression
    return {**params, "score_func": f_regression}


class _ClusterView:
    """What TPOT reads of `client.cluster`: the number of workers (`len(.workers)`)."""

    def __init__(self, client):
        self._client = client

    @property
    def workers(self):
        return self._client.scheduler_info(n_workers=-1)["workers"]


class _ClientWithCluster:
    """The job's client, for a borrowed scheduler where `client.cluster` is None."""

    def __init__(self, client):
        self._client = client
        self.cluster = _ClusterView(client)

    def __getattr__(self, name):
        return getattr(self._client, name)


def restore_dask_config(snapshot: dict) -> None:
    """Put `dask.config.config` back to `snapshot` in place (the same dict object)."""
    import dask.config
    cfg = dask.config.config
    cfg.clear()
    cfg.update(copy.deepcopy(snapshot))


def _pipeline_str(est) -> str:
    try:
        return " ".join(est.__repr__(N_CHAR_MAX=100_000).split())
    except TypeError:
        return " ".join(repr(est).split())


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class _Table:
    """Reads TPOT's evaluated-individuals table (live or final) into a leaderboard."""

    def __init__(self, objective: str):
        self.objective = objective
        self._names: dict[Any, str] = {}

    def _name(self, key, ind) -> str:
        try:
            if key in self._names:
                return self._names[key]
        except TypeError:
            key = None
        try:
            s = _pipeline_str(ind.export_pipeline())
        except Exception:
            s = " ".join(str(ind).split())
        if key is not None:
            self._names[key] = s
        return s

    def _columns(self, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """The score column (numeric, NaN until evaluated) and the evaluation error one."""
        if self.objective in df:
            score = pd.to_numeric(df[self.objective], errors="coerce")
        else:
            score = pd.Series(np.nan, index=df.index)
        if "Eval Error" in df:
            err = df["Eval Error"]
        else:
            err = pd.Series(None, index=df.index, dtype=object)
        return score, err

    def counts(self, df: pd.DataFrame) -> dict:
        score, err = self._columns(df)
        failed = err.isin(["INVALID", "TIMEOUT"])
        evaluated = score.notna() | failed
        best = score.max() if score.notna().any() else None
        gen = pd.to_numeric(df.loc[evaluated, "Generation"], errors="coerce").max() \
            if "Generation" in df and evaluated.any() else None
        gen = _finite(gen)
        return {"evaluated": int(evaluated.sum()), "failed": int(failed.sum()),
                "best_score": _finite(best), "generation": None if gen is None else int(gen)}

    def leaderboard(self, df: pd.DataFrame, instances: bool = False) -> pd.DataFrame:
        score, err = self._columns(df)
        done = score.notna() | err.isin(["INVALID", "TIMEOUT"])
        rows = []
        for key in df.index[done.to_numpy()]:
            row = df.loc[key]
            if instances and "Instance" in df:
                pipe = _pipeline_str(row["Instance"])
            else:
                pipe = self._name(key, row.get("Individual"))
            start, end = row.get("Submitted Timestamp"), row.get("Completed Timestamp")
            e = row.get("Eval Error")
            rows.append({
                self.objective: _finite(score.loc[key]),
                "eval_error": e if isinstance(e, str) else "",
                "generation": None if _finite(row.get("Generation")) is None
                else int(row.get("Generation")),
                "eval_seconds": (_finite(end) - _finite(start))
                if _finite(end) is not None and _finite(start) is not None else None,
                "pipeline": pipe,
            })
        lb = pd.DataFrame(rows, columns=[self.objective, "eval_error", "generation",
                                         "eval_seconds", "pipeline"])
        lb["generation"] = lb["generation"].astype("Int64")
        lb = lb.sort_values(self.objective, ascending=False, na_position="last", kind="stable")
        lb.insert(0, "rank", range(1, len(lb) + 1))
        return lb.reset_index(drop=True)


def _warm_up() -> bool:
    """Import what an evaluation needs on a worker before the search clock starts (the
    first evaluation on a fresh worker otherwise pays ~10 s of imports)."""
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import tpot  # noqa: F401
    return True


def _live_table(est) -> pd.DataFrame | None:
    evolver = getattr(est, "_evolver_instance", None)
    pop = getattr(evolver, "population", None)
    df = getattr(pop, "evaluated_individuals", None)
    return df.copy() if isinstance(df, pd.DataFrame) else None


def _write_bytes(root_fs, path: str, data: bytes) -> None:
    with root_fs.open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- payload
def run(data: str, target: str, output: str, task: str = "classification",
        scoring: str | None = None, cv: int = 5, max_time_mins: float = 1.0,
        generations: int | None = None, population_size: int = 10, random_state: int = 0,
        test_size: float = 0.25, max_eval_time_mins: float = 0.5, client=None,
        search_space: str = "small", drop_columns: list[str] | None = None,
        max_rows: int | None = None) -> dict:
    """Search a pipeline with TPOT on the job's cluster; write model, leaderboard, summary.

    `search_space`: "small" (scaler -> selector -> one fast estimator, the default) or a
    TPOT template name ("linear-light", "linear", "graph-light", "graph").
    `drop_columns`: columns that must not be features (ids, leaks, partition keys).
    `max_rows`: search on a random sample of this many rows (a big table and a short
    budget otherwise leave time for only a couple of evaluations).
    """
    import dask.config
    import joblib
    import sklearn.metrics
    import tpot
    from distributed import get_client
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', not {task!r}")
    classification = task == "classification"
    scoring = scoring or DEFAULT_SCORING[task]
    scorer = sklearn.metrics.get_scorer(scoring)  # fails early on an unknown name
    client = client if client is not None else get_client()

    # --- load and split
    df = load_table(data)
    if target not in df.columns:
        raise ValueError(f"target column {target!r} not in the data (columns: {list(df.columns)})")
    df = df[df[target].notna()].reset_index(drop=True)
    if max_rows is not None and len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=random_state).reset_index(drop=True)
    X = df.drop(columns=[target, *(drop_columns or [])], errors="ignore")
    numeric, boolean, categorical = split_columns(X)
    classes: list | None = None
    if classification:
        le = LabelEncoder()
        raw_y = df[target]
        y = le.fit_transform(raw_y if pd.api.types.is_numeric_dtype(raw_y) else raw_y.astype(str))
        classes = [c.item() if hasattr(c, "item") else c for c in le.classes_]
        if len(classes) < 2:
            raise ValueError(f"target {target!r} has a single class: {classes}")
    else:
        y = pd.to_numeric(df[target], errors="raise").to_numpy(dtype=float)
    stratify = y if classification else None
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, stratify=stratify, random_state=random_state)
    except ValueError:  # a class too rare to stratify: plain split
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=random_state)

    pre = make_preprocessor(numeric, boolean, categorical)
    Xt_train = pre.fit_transform(X_train, y_train).astype(float)

    # --- the search
    # TPOT sizes its queue with len(client.cluster.workers); a borrowed scheduler's client
    # has no .cluster
    tpot_client = client if getattr(client, "cluster", None) is not None \
        else _ClientWithCluster(client)
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    if search_space == "small":
        space = small_search_space(classification, len(classes) if classes else None,
                                   Xt_train.shape[0], Xt_train.shape[1], random_state)
    else:
        space = search_space
    Estimator = tpot.TPOTClassifier if classification else tpot.TPOTRegressor
    tpot_kwargs = dict(
        search_space=space, scorers=[scoring], scorers_weights=[1], cv=cv,
        max_time_mins=max_time_mins, max_eval_time_mins=max_eval_time_mins,
        generations=generations, population_size=population_size,
        n_jobs=n_workers, client=tpot_client, random_state=random_state, verbose=0,
        preprocessing=False, memory=None, early_stop=None,
    )
    objective = getattr(scorer, "_score_func", None)
    objective = objective.__name__ if objective is not None else str(scoring)
    table = _Table(objective)

    out_fs, out_root = _fs_path(output)
    out_root = out_root.rstrip("/")
    out_fs.makedirs(out_root, exist_ok=True)
    write_lock = threading.Lock()

    def write_leaderboard(lb: pd.DataFrame) -> None:
        with write_lock:
            _write_bytes(out_fs, f"{out_root}/leaderboard.csv", lb.to_csv(index=False).encode())

    t_warm = time.monotonic()
    client.run(_warm_up)
    event("tpot.started", task=task, scoring=scoring, search_space=str(search_space),
          rows_train=int(len(y_train)), rows_holdout=int(len(y_test)),
          features_numeric=len(numeric), features_boolean=len(boolean),
          features_categorical=len(categorical), encoded_features=int(Xt_train.shape[1]),
          workers=n_workers, max_time_mins=max_time_mins, generations=generations,
          population_size=population_size, cv=cv, tpot_version=tpot.__version__,
          warm_up_s=round(time.monotonic() - t_warm, 2))

    config_before = copy.deepcopy(dask.config.config)
    est = None
    stop = threading.Event()
    started = time.monotonic()
    last: dict = {}

    def watch():
        with client.as_current():
            while not stop.wait(PROGRESS_EVERY_S):
                try:
                    live = _live_table(est)
                    if live is None or live.empty:
                        continue
                    now = table.counts(live)
                    if now["evaluated"] == 0:
                        continue  # tpot.started said so already
                    if (now["evaluated"], now["best_score"]) == \
                            (last.get("evaluated"), last.get("best_score")):
                        continue
                    last.update(now)
                    event("tpot.progress", **now, elapsed_s=round(time.monotonic() - started, 2))
                    write_leaderboard(table.leaderboard(live))
                except Exception:  # the table changes under us; the next tick reads again
                    continue

    watcher = threading.Thread(target=watch, name="tpot-progress", daemon=True)
    fitted = False
    try:
        est = Estimator(**tpot_kwargs)
        watcher.start()
        est.fit(Xt_train, y_train)
        fitted = True
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
        restore_dask_config(config_before)
        if not fitted and est is not None:
            try:  # stopped mid-search (timeout, cancel, error): keep what was evaluated
                live = _live_table(est)
                if live is not None:
                    write_leaderboard(table.leaderboard(live))
            except Exception:
                pass

    # --- the final pipeline, the holdout, the artifacts
    model = Pipeline([("preprocess", pre), ("model", est.fitted_pipeline_)])
    holdout = _finite(scorer(model, X_test, y_test))
    evaluated = est.evaluated_individuals
    counts = table.counts(evaluated)
    lb = table.leaderboard(evaluated, instances=True)
    write_leaderboard(lb)
    cv_score = _finite(est.selected_best_score[objective]) \
        if objective in getattr(est, "selected_best_score", {}) else counts["best_score"]

    buf = io.BytesIO()
    joblib.dump(model, buf)
    _write_bytes(out_fs, f"{out_root}/pipeline.joblib", buf.getvalue())
    pipe_text = _pipeline_str(model)
    lines = [
        "TPOT best pipeline",
        "==================",
        f"task:            {task}",
        f"data:            {data}",
        f"target:          {target}",
    ]
    if classes is not None:
        lines.append("target classes:  " + ", ".join(f"{i} = {c!r}" for i, c in enumerate(classes))
                     + "   (predict() returns these indices)")
    lines += [
        f"scorer:          {scoring}",
        f"cv score:        {cv_score}   ({cv}-fold CV on the training part)",
        f"holdout score:   {holdout}   ({len(y_test)} rows never seen by the search)",
        f"evaluated:       {counts['evaluated']} pipelines ({counts['failed']} failed)",
        f"features:        {len(numeric)} numeric {numeric}",
        f"                 {len(boolean)} boolean {boolean}",
        f"                 {len(categorical)} categorical {categorical}",
        f"search space:    {search_space}",
        f"tpot:            {tpot.__version__}",
        "",
        "pipeline (joblib.load('pipeline.joblib').predict(raw_rows)):",
        "",
        model.__repr__(N_CHAR_MAX=100_000),
        "",
        "one line:",
        pipe_text,
        "",
    ]
    _write_bytes(out_fs, f"{out_root}/best_pipeline.txt", "\n".join(lines).encode())

    result = {
        "best_score": cv_score,
        "holdout_score": holdout,
        "pipeline": pipe_text,
        "n_evaluated": counts["evaluated"],
        "n_failed": counts["failed"],
        "scoring": scoring,
        "output": str(output),
        "target_classes": classes,
    }
    event("tpot.done", **{k: v for k, v in result.items() if k != "pipeline"},
          generation=counts["generation"], elapsed_s=round(time.monotonic() - started, 2))
    return result
