"""A script payload next to the DAG file: counts on the job's cluster like a DaskJob runner."""

import argparse
import json
import os

from distributed import Client

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3)
    n = parser.parse_args().n
    with Client() as client:  # DASK_SCHEDULER_ADDRESS: the job's cluster
        total = sum(client.gather(client.map(lambda x: x + 1, range(n))))
    print(f"counted {total}")
    with open(os.environ["DASKJOB_RESULT_FILE"], "w") as f:
        json.dump({"total": total}, f)
