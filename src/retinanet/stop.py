"""Stopping a training run on request without losing it.

Schedulers and ``docker stop`` send SIGTERM; Ctrl-C sends SIGINT. Inside ``StopSignals``
either one only sets a flag: the training loop finishes the step it is in, saves a
resumable checkpoint and raises ``TrainingInterrupted``, which the command line turns
into a message and a non-zero exit code (128 + the signal number, as a shell reports a
killed process). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """A run stopped by a signal after saving a resumable checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopSignals:
    """Within ``with StopSignals() as stop:``, SIGTERM and SIGINT set ``stop.signum``
    instead of killing the process. Outside the main thread (where Python cannot install
    handlers) it does nothing and ``signum`` stays None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                previous = signal.getsignal(s)
                if previous is signal.SIG_IGN:  # a job told to ignore it (nohup, a background job) keeps ignoring it
                    continue
                signal.signal(s, self._handle)
                self._previous[s] = previous
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            # None: a handler installed from C, which Python cannot reinstall; the default is the closest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
