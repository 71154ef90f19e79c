"""MLproject entry point `inspect`: `lora-study inspect --help` lists its parameters.

Not named inspect.py: Python puts this folder first on sys.path, and the file would shadow the
standard library's `inspect`, which torch and MLflow import."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
