"""`daskjob run JOB.yaml`, `daskjob show RECORD`, `daskjob report RUN`, `daskjob reap`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import show
from .show import stdout_console

console = Console(stderr=True)
if not console.is_terminal:  # piped or redirected: whole lines, never wrapped at 80 columns
    console = Console(stderr=True, width=100_000, soft_wrap=True)
out = stdout_console()


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        try:
            params[key] = json.loads(raw)  # numbers, booleans, lists; else a plain string
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _print_event(record: dict) -> None:
    from .observe import is_dask_internal
    topic = record["topic"]
    if is_dask_internal(topic):
        return  # lifecycle: the daskjob logger reports it; distributed's own: noise
    data = record.get("data")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("worker", "worker_name")}
    console.print(f"[cyan]event[/] [bold]{topic}[/] [dim]{record.get('worker') or ''}[/] {data}",
                  highlight=False, soft_wrap=True)


def _load_job(args: argparse.Namespace):
    """The job file as a JobSpec; an invalid one is said, and leaves a record."""
    from .errors import SpecError
    from .lifecycle import write_rejected_record
    from .spec import JobSpec, load_yaml
    # like `python -m`: "module:function" payloads resolve from here and from the job's folder
    for folder in (os.path.dirname(os.path.abspath(args.job)), os.getcwd()):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    raw = None
    try:
        raw = load_yaml(args.job, params=_parse_params(args.param or []))
        if args.record_dir:
            raw["record_dir"] = args.record_dir
        return JobSpec.parse(raw)
    except SpecError as e:
        where = write_rejected_record(raw, e) if raw is not None else None
        console.print(f"[red]invalid job:[/] {e}")
        if where:
            console.print(f"record: {where}")
        return None


@contextlib.contextmanager
def _progress_bar(run, name: str, show: bool):
    """The run's Dask tasks as a progress bar, on a terminal."""
    if not show:
        yield
        return
    stop = threading.Event()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                        console=console, transient=True)

    def watch():
        task = progress.add_task(name, total=None, counts="starting the cluster")
        while not stop.wait(0.5):
            counts = run.task_progress()
            if counts and counts["added"]:
                progress.update(task, total=counts["added"], completed=counts["done"],
                                counts=f"{counts['done']}/{counts['added']} tasks, "
                                       f"{counts['erred']} erred")
            elif counts:
                progress.update(task, counts="no Dask tasks yet")

    progress.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(2)
        progress.stop()


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import JobFailed
    from .lifecycle import JobRun
    from .live import install_signal_handlers

    spec = _load_job(args)
    if spec is None:
        return 2
    run = JobRun(spec, on_event=None if args.quiet else _print_event)
    install_signal_handlers()
    try:
        with _progress_bar(run, spec.name, not args.quiet and console.is_terminal):
            result = run.run()
    except JobFailed as e:
        console.print(f"[red bold]{e.status}[/]: {e}", highlight=False)
        if e.record_path:
            console.print(f"to see it in a browser: daskjob report {e.record_path}",
                          highlight=False)
        return 1
    rec = result.record
    console.print(f"[green bold]succeeded[/] in {rec['duration_s']}s · {rec['events']['count']} "
                  f"events · {rec['logs']['lines']} log lines")
    console.print(f"record: {rec['record_path']}")
    console.print(f"to see it in a browser: daskjob report {rec['record_path']}", highlight=False)
    if result.value is not None:
        if rec["result"].get("json"):
            out.print_json(data=rec["result"].get("value"))
        else:
            out.print(repr(result.value))
    return 0


def _reap_specs(args: argparse.Namespace) -> list:
    """The ClusterSpecs that say how to reach each backend's cluster manager: a job
    file's cluster for its own backend, else that backend's defaults."""
    from .errors import SpecError
    from .spec import ClusterSpec, load_yaml
    cluster = None
    if args.job:
        data = load_yaml(args.job)
        # only the cluster section says how to reach the manager (the payload is not
        # imported: it may not import here)
        cluster = ClusterSpec.parse(data.get("cluster") or {} if "payload" in data else data)
    names = args.backend or ([cluster.backend] if cluster is not None else [])
    specs = []
    for name in dict.fromkeys(names):
        if name == "local":
            continue  # processes on this machine are always looked for
        if cluster is not None and cluster.backend == name:
            specs.append(cluster)
            continue
        try:
            specs.append(ClusterSpec.parse({"backend": name}))
        except SpecError as e:
            raise SpecError(f"reap --backend {name}: give --job FILE, a job whose cluster says "
                            f"how to reach it ({e})") from None
    return specs


def cmd_reap(args: argparse.Namespace) -> int:
    from .durations import seconds
    from .errors import SpecError
    from .reap import find_backend_leftovers, find_orphans, reap, stop_backend_leftovers
    older = seconds(args.older_than, field="--older-than") if args.older_than else None
    try:
        specs = _reap_specs(args)
    except SpecError as e:
        console.print(f"[red]cannot reap:[/] {e}")
        return 2
    orphans = find_orphans(older_than=older)
    leftovers = [(spec, find_backend_leftovers(spec, older)) for spec in specs]
    if not orphans and not any(found for _, found in leftovers):
        out.print("nothing to reap")
        return 0
    if orphans:
        t = Table("run id", "pid", "age", "command", title="processes left behind by killed runs")
        for o in orphans:
            t.add_row(o.run_id, str(o.pid), f"{o.age_s:.0f}s", o.command[:80])
        out.print(t)
    for spec, found in leftovers:
        if not found:
            continue
        t = Table("run id", "name", "age", "detail",
                  title=f"{spec.backend}: clusters left behind by killed runs")
        for lo in found:
            t.add_row(lo.run_id, lo.name, "?" if lo.age_s is None else f"{lo.age_s:.0f}s",
                      lo.detail[:80])
        out.print(t)
    total = len(orphans) + sum(len(found) for _, found in leftovers)
    if args.dry_run:
        out.print(f"{total} would be stopped (--dry-run)")
        return 0
    failed = 0
    # cluster managers first: stopping a batch job or a remote cluster also ends local
    # processes that would otherwise each get the orphans' grace period
    for spec, found in leftovers:
        for lo, error in stop_backend_leftovers(spec, found):
            if error:
                failed += 1
                out.print(f"[red]could not stop {spec.backend} {lo.name}: {error}[/]")
            else:
                out.print(f"stopped {spec.backend} {lo.name} (run {lo.run_id})")
    orphans = [o for o in orphans if o.process.is_running()]
    if orphans:
        stopped = reap(orphans)
        out.print(f"stopped {len(stopped)} process(es)")
    return 1 if failed else 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .datasets import write_drop
    paths = write_drop(args.dest, args.date, args.rows, seed=args.seed,
                       bad_fraction=args.bad_fraction)
    out.print(f"wrote {args.rows} synthetic bank-marketing rows for {args.date} "
              f"({len(paths)} file(s)) to {paths[0].rsplit('/', 1)[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="daskjob", description="Run Dask jobs on ephemeral clusters.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a job file on an ephemeral cluster")
    r.add_argument("job", help="job YAML file (name, payload, params, cluster, ...)")
    r.add_argument("--param", "-p", action="append", metavar="KEY=VALUE",
                   help="set a payload parameter (repeatable; values parsed as JSON when possible)")
    r.add_argument("--record-dir", help="override the job's record_dir")
    r.add_argument("--quiet", "-q", action="store_true", help="no live events or progress bar")
    r.set_defaults(fn=cmd_run)
    show.add_parser(sub)
    from .report.command import add_parser as add_report_parser
    add_report_parser(sub)
    k = sub.add_parser("reap", help="stop clusters and processes left behind by killed runs")
    k.add_argument("--older-than", metavar="AGE",
                   help="only runs started at least this long ago (e.g. 1h); a run whose "
                        "driver was on another host is taken once it is that old (without "
                        "it: once it is past its expiry)")
    k.add_argument("--backend", action="append", metavar="NAME",
                   help="also look on this backend's cluster manager (repeatable; processes on "
                        "this machine are always looked for)")
    k.add_argument("--job", metavar="FILE",
                   help="job or cluster YAML whose cluster section says how to reach the "
                        "cluster manager (address, options, secrets)")
    k.add_argument("--dry-run", action="store_true", help="list, do not stop")
    k.set_defaults(fn=cmd_reap)
    d = sub.add_parser("demo-data", help="write a day's synthetic bank-marketing CSV drop")
    d.add_argument("--dest", required=True, help="folder or fsspec URL; files go to DEST/date=DATE/")
    d.add_argument("--date", required=True, help="YYYY-MM-DD")
    d.add_argument("--rows", type=int, required=True)
    d.add_argument("--bad-fraction", type=float, default=0.02, help="share of malformed rows")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo_data)
    args = ap.parse_args(argv)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False,
                                               rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="%H:%M:%S"))
    else:  # plain lines for a file or a pipe
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                               datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
