"""Files written so that a kill at any moment leaves either the old file or the new one.

``write_atomic`` writes the bytes to a temporary file beside the target, fsyncs it,
renames it over the target and fsyncs the folder, so the rename itself survives a power
cut. A write that fails (disk full, file too large, no permission) raises an OSError
whose filename is the target and whose strerror says why; the temporary file is removed
and the previous file is left as it was. ``remove_stale_temps`` deletes the temporary
files a kill during a write leaves behind (training calls it when a run starts or resumes).
"""

from __future__ import annotations

import errno as errnos
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".tmp"
# <target name>.<mkstemp's 8 random characters>.tmp
_TEMP_TAIL = re.compile(r"^\.[A-Za-z0-9_]{8}\.tmp$")


def _is_temp_of(name: str, targets: tuple[str, ...]) -> bool:
    return any(name.startswith(t) and _TEMP_TAIL.match(name[len(t):]) for t in targets)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path: str | Path, e: OSError) -> OSError:
    """``e`` as an OSError that names ``path`` and the cause in one line."""
    cause = e.strerror or str(e) or errnos.errorcode.get(e.errno or 0, "write failed")
    return OSError(e.errno, f"cannot write ({cause})", str(path))


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (else the usual 022)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_atomic(path: str | Path, data: bytes | memoryview, on_written: Callable[[], None] | None = None) -> Path:
    """Replace ``path`` by ``data`` atomically. ``on_written`` runs after the temporary
    file is complete and before the rename (the fault-injection point of tests)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it; mkstemp gives 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if on_written is not None:
            on_written()
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files an interrupted ``write_atomic`` of one of ``names`` left in
    ``folder`` (<name>.<8 random characters>.tmp); nothing else is touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and _is_temp_of(p.name, names)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
