"""MLproject entry point `prepare`: `lora-study prepare --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
