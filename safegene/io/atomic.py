"""The one way an output appears: written beside its final path, then renamed into place.

`atomic_dir(final)` yields a fresh hidden sibling directory `.NAME.tmp-PID`; when the block
succeeds its files are fsynced and it is renamed to `final` (an existing `final` is moved aside
to `.NAME.old-*` first and removed after the swap). `atomic_file(final)` does the same for one
file (a text or binary handle on `.NAME.tmp-PID`, fsynced, `os.replace`d). On any exception the
temporary sibling is removed and `final` is left as it was.

A `kill -9` cannot clean up after itself: both helpers first remove the `.NAME.tmp-PID` siblings
of `final` whose process is gone (`remove_stale_temps`), so reruns do not pile them up.

Races: an output is *claimed* (`claim(final)`): an exclusive `flock` on the sibling
`.NAME.lock`, which the kernel drops when the process dies, so a claim never goes stale.
`atomic_dir` holds the claim while it writes and renames. `check_output_path` claims before any
work (`claim_output`): inside `holding_claims()` (a CLI run) the claim is kept until the output
is renamed in or the run ends, so of two runs writing one output the second is refused at once;
outside it (the Python API) it only checks that no other process holds one. And
`atomic_dir(final, replace=False)` refuses at the rename if `final` appeared meanwhile, so
nothing is ever silently replaced.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from safegene.errors import SafeGeneError


def temp_sibling(final: Path) -> Path:
    """The hidden temporary path this process writes `final` through."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def pid_alive(pid: str) -> bool:
    """Is the process `pid` (a temp sibling's suffix) still running? This process counts as gone:
    a temp sibling of ours that is already there is a leftover of an earlier failed attempt."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return int(pid) != os.getpid()


def remove_stale_temps(final: Path) -> None:
    """Remove the `.NAME.tmp-PID` siblings of `final` left by processes that no longer run."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        if pid_alive(stale.name.rsplit("-", 1)[-1]):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def lock_sibling(final: Path) -> Path:
    """The lock file that claims `final` (see `claim`)."""
    return final.with_name(f".{final.name}.lock")


_CLAIMS: dict[Path, tuple[int, int]] = {}  # final -> (fd of its lock file, pid that took it)


# The claims a launching process holds for the ranks it starts (`evaluate.parallel.spawn`):
# a rank does not claim again what its launcher holds.
HELD_BY_LAUNCHER = "SAFEGENE_HELD_CLAIMS"


def held_claims() -> list[str]:
    """The outputs this process holds claims on (for the processes it launches)."""
    return [str(f) for f, (_, pid) in _CLAIMS.items() if pid == os.getpid()]


def claim(final: str | os.PathLike) -> Path:
    """Claim the output `final` for this process (idempotent): an exclusive `flock` on its
    `.NAME.lock` sibling. A SafeGeneError when another live process holds it (unless it is the
    process that launched this one: HELD_BY_LAUNCHER)."""
    final = Path(final).absolute()
    if str(final) in os.environ.get(HELD_BY_LAUNCHER, "").split(os.pathsep):
        return final
    held = _CLAIMS.get(final)
    if held is not None and held[1] == os.getpid():
        return final
    lock = lock_sibling(final)
    for _ in range(20):  # the file may be unlinked by its releaser between open and flock
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SafeGeneError(
                f"another process is writing {final} right now; wait for it or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _CLAIMS[final] = (fd, os.getpid())
            return final
        os.close(fd)
    raise SafeGeneError(f"cannot claim the output {final} (its lock file keeps changing)")


def release(final: str | os.PathLike) -> None:
    """Give up this process's claim on `final` (its lock file is removed)."""
    final = Path(final).absolute()
    held = _CLAIMS.pop(final, None)
    if held is None:
        return
    fd, pid = held
    if pid == os.getpid():
        with contextlib.suppress(OSError):
            os.unlink(lock_sibling(final))
    with contextlib.suppress(OSError):
        os.close(fd)


os.register_at_fork(after_in_child=_CLAIMS.clear)  # a child holds no claim of its parent's


_HOLDING = [False]  # inside holding_claims(): claim_output keeps its claims


def claim_output(final: str | os.PathLike) -> None:
    """Before a run's work: claim `final`, kept within `holding_claims()`, else only checked
    (claimed and released at once: a Python caller that fails leaves nothing held)."""
    claim(final)
    if not _HOLDING[0]:
        release(final)


@contextlib.contextmanager
def holding_claims() -> Iterator[None]:
    """A run (the CLI's): outputs claimed by `claim_output` stay claimed until they are written
    or the block ends (on success, error, Ctrl-C, SIGTERM or SIGHUP alike)."""
    _HOLDING[0] = True
    try:
        yield
    finally:
        _HOLDING[0] = False
        release_all()


@contextlib.contextmanager
def claimed(final: str | os.PathLike | None) -> Iterator[None]:
    """`claim(final)` for the block, released after it unless this process held it before
    (None: nothing is claimed)."""
    if final is None:
        yield
        return
    before = _CLAIMS.get(Path(final).absolute())
    claim(final)
    try:
        yield
    finally:
        if before is None or before[1] != os.getpid():
            release(final)


@atexit.register
def release_all() -> None:
    """Every claim of this process (at exit, and on SIGTERM/SIGHUP through the CLI)."""
    for final in list(_CLAIMS):
        release(final)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            _fsync(p)
    _fsync(path)


def _swap_in(tmp: Path, final: Path, replace: bool = True) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first, then removed. Without
    `replace` an existing `final` (one that appeared while this run worked) is an error."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    if not replace:
        raise SafeGeneError(f"output {final} appeared while this run worked; nothing was replaced")
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary sibling directory; on success it becomes `final` (see module doc).

    The caller decides whether an existing `final` may be replaced (`check_output_path`, then
    `replace`). `final` is claimed (`claim`) for the block and released after it."""
    final = Path(final)
    claim(final)
    try:
        remove_stale_temps(final)
        tmp = temp_sibling(final)
        try:  # (mkdir inside: a signal right after it still removes the directory)
            tmp.mkdir()
            yield tmp
            _fsync_tree(tmp)
            _swap_in(tmp, final, replace)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        release(final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yield a handle on a temporary sibling of `final` ("w": UTF-8 text, "wb": bytes); on
    success it is fsynced and replaces `final` in one rename."""
    final = Path(final)
    remove_stale_temps(final)
    tmp = temp_sibling(final)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """`final` holds `text` (UTF-8), or is left as it was."""
    with atomic_file(final) as fh:
        fh.write(text)
