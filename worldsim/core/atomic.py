"""Atomic writes: a reader finds the old file (or folder) or the new one, never a torn one.

Every writer in worldsim goes through here (checkpoint and codec export, sessions, training
state, IDM folders, metrics.json, dataset episodes and index, bench json, caches):

    write_bytes(path, data)        # temp file in the same folder, fsync, os.replace
    write_text(path, text)
    with staged_dir(path) as tmp:  # fill tmp; on success it replaces path as a whole
        write_bytes(tmp / "a.safetensors", ...)

A file is written to ``.<name>.tmp-<pid>`` beside its target (same file system, so the rename
is atomic), flushed to disk, then renamed over the target; the folder's entry is fsynced too. A
folder is filled under a temp name and swapped in: on Linux with ``renameat2(RENAME_EXCHANGE)``,
one atomic step in which the old folder never disappears; elsewhere with two renames, where a
crash between them leaves the old folder at ``<name>.old`` (:func:`recover_dir` puts it back).
A ``KeyboardInterrupt`` or an error before the rename leaves the target untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from worldsim.core.errors import WorldsimError

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where that is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def replace_dir(staged: str | Path, final: str | Path) -> None:
    """Put folder ``staged`` at ``final`` as a whole, replacing any folder there (see the module
    docstring); ``staged`` is gone afterwards."""
    staged, final = Path(staged), Path(final)
    for f in staged.rglob("*"):  # the files' data on disk before they become visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if not final.exists():
        os.replace(staged, final)
    elif _exchange(staged, final):
        shutil.rmtree(staged)  # now the old folder
    else:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def recover_dir(final: str | Path) -> None:
    """After a crash between :func:`replace_dir`'s two renames (no ``renameat2``): put
    ``<final>.old`` back where ``final`` is missing."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.is_dir():
        os.replace(old, final)


@contextmanager
def staged_dir(final: str | Path, keep: bool = False) -> Iterator[Path]:
    """A fresh temp folder beside ``final``; when the block ends without an exception it
    replaces ``final`` as a whole (:func:`replace_dir`), otherwise it is removed and ``final`` is
    untouched. ``keep``: copy the entries of the old ``final`` that the block did not write (a
    README beside exported weights) into the new folder first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = _tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if keep and final.is_dir():
            for entry in final.iterdir():
                if not (tmp / entry.name).exists() and not entry.name.startswith("."):
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name)
                    else:
                        shutil.copy2(entry, tmp / entry.name)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_writable_dir(path: str | Path, what: str) -> Path:
    """Check, before any slow work, that files can be written in folder ``path`` (created later
    by the caller if missing) -> the path. Creates what is missing and a probe file, then removes
    both, so a refused command leaves nothing behind. ``WorldsimError`` ``"<what>=<path>: cannot
    write there (<reason>)"`` otherwise; ``what`` names the option (``out``, ``--out``)."""
    p = Path(path)
    tries = 0
    while True:  # the ranks of a torchrun check the same folder at once: a race is tried again, twice
        try:
            _probe_dir(p)
            return p
        except OSError as e:
            tries += 1
            if tries == 3 or not isinstance(e, (FileExistsError, FileNotFoundError)):
                raise WorldsimError(f"{what}={p}: cannot write there ({e.strerror or e})") from None


def _probe_dir(p: Path) -> None:
    """:func:`require_writable_dir`'s check: create what is missing and a probe file, remove both
    (a folder another process removed or still uses is left to it); ``OSError`` when it fails."""
    missing, q = [], p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    made: list[Path] = []
    try:
        if q.exists() and not q.is_dir():
            raise NotADirectoryError(20, "not a folder", str(q))
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:  # another process's probe is in it, or it removed it first
                pass
