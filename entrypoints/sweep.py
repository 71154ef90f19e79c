"""MLproject entry point `sweep`: `lora-study sweep --help` lists its parameters."""

import os
import sys

from lora_study import parent_runs  # MLflow alone: the run `mlflow run` made beats before the heavy imports

if __name__ == "__main__":
    with parent_runs.heartbeat(os.environ.get("MLFLOW_RUN_ID"), parent_runs.HEARTBEAT_S):
        from lora_study.cli import main

        sys.exit(main(["sweep", *sys.argv[1:]]))
