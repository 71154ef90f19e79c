"""MLproject entry point `report`: `lora-study report --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
