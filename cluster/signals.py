"""`owc serve`'s signals: SIGTERM behaves like Ctrl-C, an Interrupted (KeyboardInterrupt) that
unwinds the main thread into the teardown; also while Ray starts, whose ray.init installs a
SIGTERM handler of its own that ends the process with no teardown at all."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Interrupted(KeyboardInterrupt):
    pass


def install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C: unwinds the main thread into the teardown path."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def ray_signals_as_interrupt() -> Iterator[None]:
    """Around ray.init, until owc takes SIGTERM back: the SystemExit(signum) Ray's handler raises
    becomes an Interrupted, so the teardown runs (the local Redis stopped, the half-started Ray
    node reaped) instead of the process exiting 15 with both left behind."""
    try:
        yield
    except SystemExit as e:
        if e.code in (signal.SIGTERM, signal.SIGINT):
            raise Interrupted(signal.Signals(e.code).name) from None
        raise
