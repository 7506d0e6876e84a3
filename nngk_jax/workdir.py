"""One run per work directory: an exclusive lock held for the run's lifetime.

``train_and_evaluate`` holds :class:`WorkdirLock` on ``<workdir>/.lock``
while it trains. The lock is an ``fcntl.flock`` on that file, so the kernel
releases it when the process ends in any way (exit, exception, SIGKILL): a
lock left by a killed run never blocks the next one. The file keeps the
holder's pid and host, to name it when a second run is refused.

:func:`write_atomically` is how every file of a run (history, saved index,
compressed bank, glyph cache) is written: a reader, or a run resumed after
a kill, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import threading
import time

__all__ = ["WorkdirBusyError", "WorkdirLock", "read_metadata",
           "write_atomically"]


def write_atomically(path: str | os.PathLike, payload: bytes) -> pathlib.Path:
  """Writes ``payload`` to ``path`` through a temporary file and a rename.

  The temporary file sits in the same folder under a name unique to this
  process and thread (concurrent writers never share one) and is removed if
  the write fails.

  Examples:
    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_atomically(path, b"hello").read_text()
    'hello'
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}"
                       ".tmp")
  try:
    tmp.write_bytes(payload)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def read_metadata(path: str | os.PathLike, *, format_name: str,
                  version: int, what: str, error: type[Exception]) -> dict:
  """The JSON metadata a saved file set starts with, checked.

  Args:
    path: the ``.json`` file (it must exist).
    format_name: the ``"format"`` entry it must hold.
    version: the ``"version"`` entry it must hold.
    what: what the files are, for the message (e.g. ``"an nngk-jax
      index"``).
    error: the exception to raise (a ``ValueError`` subclass of the caller).

  Raises:
    error: the file is not JSON, not a JSON object of ``format_name``, or
      of another ``version``; the message names the file.

  Examples:
    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.json"
    >>> _ = path.write_text('{"format": "x", "version": 1, "n": 3}')
    >>> read_metadata(path, format_name="x", version=1, what="an x",
    ...               error=ValueError)["n"]
    3
  """
  path = pathlib.Path(path)
  try:
    metadata = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as cause:
    raise error(f"{path} is damaged: not valid JSON ({cause})") from None
  found = metadata.get("format") if isinstance(metadata, dict) else None
  if not isinstance(metadata, dict) or found != format_name:
    raise error(f"{path} is not {what} (format {found!r}, expected "
                f"{format_name!r})")
  if metadata.get("version") != version:
    raise error(f"{path} has format version {metadata.get('version')!r}; "
                f"this nngk-jax reads version {version}")
  return metadata


class WorkdirBusyError(RuntimeError):
  """Another process is training in this work directory."""


class WorkdirLock:
  """Context manager: exclusive use of a work directory.

  Examples:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with WorkdirLock(d):
    ...   try:
    ...     WorkdirLock(d).acquire()
    ...   except WorkdirBusyError as error:
    ...     print("refused")
    refused
    >>> with WorkdirLock(d):  # released on exit: free again
    ...   pass
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / ".lock"
    self._file = None

  def acquire(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise WorkdirBusyError(
          f"the work directory {self.path.parent} is in use by {holder}; "
          f"wait for that run to finish (or stop it), or pass another "
          f"--workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    self._file = handle
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
