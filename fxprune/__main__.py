"""`python -m fxprune` is the `fxprune` command."""

import sys

from .cli import main

sys.exit(main())
