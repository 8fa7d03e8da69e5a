"""``python -m utils.bench`` (see ``utils/bench/cli.py`` for the options)."""
import sys

from utils.bench.cli import main

sys.exit(main())
