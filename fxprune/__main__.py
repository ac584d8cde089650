"""`python -m fxprune` is the `fxprune` command."""

import sys

from fxprune.runners.cli import main

sys.exit(main())
