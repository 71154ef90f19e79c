"""MLproject entry point `promote`: `lora-study promote --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
