"""Writing files so that an interrupted run never leaves one half-written,
a failed write (a full disk, any OS error) one line that names the file, and
the lock that keeps runs writing into one folder from losing each other's
work."""

import contextlib
import errno
import os
import shutil
from pathlib import Path

from utils import UsageError, one_line

try:
    import fcntl  # POSIX only
except ImportError:
    fcntl = None


class WriteError(Exception):
    """A file of the run could not be written; the message names it and the cause."""

    def __init__(self, path, error):
        reason = getattr(error, "strerror", None) or one_line(error)
        super().__init__(
            f"cannot write {path}: {reason}; what was complete before is unchanged. Free some space (or fix "
            "the cause) and run again; --resume 1 skips the models already written"
        )
        self.path = path


@contextlib.contextmanager
def writing(path):
    """Every write of a run happens inside this block: an OS error (a full
    disk above all) becomes one WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error) from None


def check_space(path, nbytes):
    """Raise WriteError (no space left) unless `path`'s filesystem has
    `nbytes` free. For writes that must not start on a full disk: h5py (which
    Keras writes weights with) crashes the interpreter after a failed write."""
    folder = next(parent for parent in (Path(path), *Path(path).parents) if parent.exists())
    if shutil.disk_usage(folder).free < nbytes:
        raise WriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one
    step, on failure (or Ctrl-C) it is removed. Readers see the old file or the
    new one, never a half-written one. An OS error is a WriteError naming `path`."""
    path = Path(path)
    # The suffix stays last: Keras saves a model only to a name ending in .keras.
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text)


@contextlib.contextmanager
def file_lock(path, on_busy=None):
    """Hold an exclusive lock for `path` (on a hidden .lock file beside it)
    while the block runs: fcntl's advisory lock, which every process of this
    project takes. When another process holds it, `on_busy(its process id)`
    is called once (the id is None if it has not written it yet) and the
    lock is waited for. Yields whether it had to wait. Where fcntl does not
    exist (Windows) there is no lock."""
    if fcntl is None:
        yield False
        return
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        waited = False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if on_busy is not None:
                lock.seek(0)
                holder = lock.read().strip()
                on_busy(int(holder) if holder.isdigit() else None)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            yield waited
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_writable_folder(folder, flag):
    """Create `folder` and prove a file can be written in it, or raise a
    UsageError naming `flag`. Permissions alone do not tell (root may write
    anywhere, yet not in /proc), so this tries."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write_check").write_text("")
        (folder / ".write_check").unlink()
    except OSError as error:
        raise UsageError(
            f"{flag} {folder}: cannot write there ({error.strerror or error}); name another folder"
        ) from None


def saved_size(model):
    """Bytes that saving `model` (weights and optimizer state) may take, with
    a quarter and 128 KiB to spare for h5py's and zip's own: what a write
    checks is free before h5py starts on it."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
    return sum(int(variable.numpy().nbytes) for variable in variables) * 5 // 4 + (128 << 10)
