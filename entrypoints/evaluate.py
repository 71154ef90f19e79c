"""MLproject entry point `evaluate`: `lora-study evaluate --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
