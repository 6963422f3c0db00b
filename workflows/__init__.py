"""Example Flyte workflows built on flyte_plugin.dask_task (they double as tests).

Run one from the repo root:  pyflyte run workflows/nightly_etl.py nightly_etl --date 2026-11-20
"""
