"""MLproject entry point `merge`: `lora-study merge --help` lists its parameters."""

import sys

from lora_study.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
