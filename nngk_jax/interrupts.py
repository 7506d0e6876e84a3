"""SIGINT (Ctrl-C) and SIGTERM stop training at the next step boundary.

While :func:`nngk_jax.train.train_and_evaluate` trains, :class:`StopOnSignal`
turns the first SIGINT or SIGTERM into a flag, :attr:`StopOnSignal.signum`,
that the step loop reads between steps (a Python attribute: no device
synchronisation). The loop then finishes the step under way, saves a
checkpoint at that step boundary and raises :class:`TrainingInterrupted`,
whose message says where training stopped and how to resume; the command
line exits with the conventional status, 128 + the signal number (130 for
SIGINT, 143 for SIGTERM). A second signal while the first is being handled
exits at once (:class:`StoppedAtOnce`, a ``KeyboardInterrupt``), without a
new checkpoint.

Handlers are only installed from the main thread (Python delivers signals
there); elsewhere :class:`StopOnSignal` is inert.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopOnSignal", "StoppedAtOnce", "StoppedBySignal",
           "TrainingInterrupted", "exit_code"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
  """The shell's status for a process ended by ``signum``: 128 + its number.

  Examples:
    >>> exit_code(signal.SIGINT), exit_code(signal.SIGTERM)
    (130, 143)
  """
  return 128 + int(signum)


class StoppedBySignal(KeyboardInterrupt):
  """Training ended on a signal.

  A ``KeyboardInterrupt``, so code that lets Ctrl-C through lets this through
  too.

  Attributes:
    signum: the signal received.
    exit_code: ``128 + signum``.
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = exit_code(signum)


class TrainingInterrupted(StoppedBySignal):
  """A signal: training stopped at a step boundary, after a checkpoint."""


class StoppedAtOnce(StoppedBySignal):
  """A second signal: training ended where it was, without a checkpoint."""


class StopOnSignal:
  """Context manager: SIGINT and SIGTERM set :attr:`signum` instead of
  stopping the process; a second one raises :class:`StoppedAtOnce` at once.

  Examples:
    >>> import os
    >>> with StopOnSignal() as stop:
    ...   os.kill(os.getpid(), signal.SIGTERM)
    ...   stop.signum == signal.SIGTERM
    True
    >>> stop.name
    'SIGTERM'
  """

  def __init__(self) -> None:
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def name(self) -> str | None:
    """``"SIGINT"`` or ``"SIGTERM"`` once one arrived, else ``None``."""
    return None if self.signum is None else signal.Signals(self.signum).name

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:
      raise StoppedAtOnce(
          f"second {signal.Signals(signum).name}: stopped at once, without "
          f"a new checkpoint", signum)
    self.signum = signum
    print(f"\n{signal.Signals(signum).name} received: stopping after the "
          f"current step and saving a checkpoint (Ctrl-C again to exit at "
          f"once)", file=sys.stderr, flush=True)

  def __enter__(self) -> "StopOnSignal":
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
