"""The stop signals rvdeploy unwinds on (rvdeploy.cli turns each into KeyboardInterrupt), and a way to hold
them over a step that must not be cut in half: swapping a bundle into place, ending a child process group.
A signal that arrives meanwhile is delivered when the step is over."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def held() -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
