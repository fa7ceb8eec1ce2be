"""Owner-only state: ``state_dir`` and everything under it readable by the server's user alone.

``state_dir`` holds patient data (the database and its WAL, the spool, results, exports) and
secrets (tokens, salts), so its folders are 0700 and its files 0600:

- the server process runs under :data:`PRIVATE_UMASK` (``medgate serve`` sets it before anything is
  created; Ray's processes inherit it), so whatever it creates is owner-only;
- :func:`private_database` creates the SQLite file 0600 before SQLite opens it (SQLite's unix VFS
  gives the ``-wal`` and ``-shm`` files the database file's mode) and fixes an existing one;
- :func:`secure_tree` fixes an install made before this, at every start.

Stdlib only: any layer may use it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

#: Group and others get nothing (files 0600, folders 0700 at most).
PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
#: Files SQLite keeps beside a database (write-ahead log, its index, a rollback journal).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def restrict_umask() -> int:
    """Set :data:`PRIVATE_UMASK` for this process and its children; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def _restrict(path: str | os.PathLike, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if it differs (links are not followed); True when changed."""
    current = os.lstat(path)
    if stat.S_ISLNK(current.st_mode) or stat.S_IMODE(current.st_mode) == mode:
        return False
    os.chmod(path, mode)
    return True


def private_folder(path: str | Path) -> Path:
    """``path`` created 0700 when missing (with its parents); an existing folder is left as it is."""
    path = Path(path)
    try:
        path.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    return path


def private_database(path: str | Path) -> Path:
    """The SQLite database at ``path`` as an owner-only file, before SQLite opens it.

    Its folder is created 0700 when missing; the file is created 0600 when missing, and the file
    and its side files (:data:`SQLITE_SIDE_FILES`) are made 0600 when they are not.

    An existing file is never opened here: POSIX record locks belong to the process, and closing any
    descriptor of a file drops all of them, so opening and closing a database that a connection of
    this process holds would drop SQLite's locks (another process could then delete the WAL under
    it).  Only a file that does not exist yet is created, exclusively.
    """
    path = Path(path)
    private_folder(path.parent)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    for candidate in (str(path), *(f"{path}{suffix}" for suffix in SQLITE_SIDE_FILES)):
        try:
            _restrict(candidate, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            pass
    return path


def secure_tree(root: str | Path) -> int:
    """Make ``root`` and every folder under it 0700 and every file 0600; returns how many changed.

    Symbolic links are neither changed nor followed.  Raises :class:`NotADirectoryError` naming
    ``root`` when it is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"state_dir {str(root)!r} is not a folder")
    changed = int(_restrict(root, PRIVATE_DIR_MODE))
    folders = [str(root)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    changed += _restrict(entry.path, PRIVATE_DIR_MODE)
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    changed += _restrict(entry.path, PRIVATE_FILE_MODE)
    return changed
