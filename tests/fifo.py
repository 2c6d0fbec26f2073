"""A FIFO that cannot hang a test: should the code under test open it for reading (and wait for a
writer), a writer comes after ``grace`` seconds, so the test ends and fails on its own checks."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fifo_at(path: Path, *, grace: float = 10.0) -> Iterator[Path]:
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        if done.wait(grace):
            return
        # ENXIO when nobody reads: then nobody is waiting either
        with contextlib.suppress(OSError), open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w"):
            pass

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join()
