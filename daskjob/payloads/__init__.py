"""Built-in payloads: etl (the nightly ETL step) and tpot_search (AutoML on the job cluster)."""
