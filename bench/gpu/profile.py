"""Profile `fxprune ARGS...` for at most SECONDS with cProfile and print the functions that took the
most time (own and cumulative): how the GPU check finds where a slow step goes.

    python -m bench.gpu.profile 150 transfer timm:efficientnet_lite0 ... --device cuda
"""

from __future__ import annotations

import cProfile
import pstats
import signal
import sys


class _Stop(BaseException):
    pass


def _stop(*_):
    raise _Stop


def main() -> None:
    seconds, argv = int(sys.argv[1]), sys.argv[2:]
    from fxprune.runners.cli import main as cli

    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(seconds)
    profile = cProfile.Profile()
    try:
        profile.runcall(cli, argv)
    except (_Stop, SystemExit):
        pass
    stats = pstats.Stats(profile, stream=sys.stdout)
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key).print_stats(35)


if __name__ == "__main__":
    main()
