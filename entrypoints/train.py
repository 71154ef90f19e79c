"""MLproject entry point `train`: `lora-study train --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
