"""Progress bars that suit where they are shown: redrawn ten times a second on a terminal, one line
every 30 seconds in a log (CI, a file), where every redraw would be kept."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(iterable, *, desc: str, show: bool = True, **kwargs):
    return tqdm(iterable, desc=desc, disable=not show, mininterval=0.1 if sys.stderr.isatty() else 30, **kwargs)
