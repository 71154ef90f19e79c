import sys

from lora_study.cli import main

sys.exit(main())
