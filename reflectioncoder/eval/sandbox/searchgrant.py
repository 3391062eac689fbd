"""The fallback's way to a toolchain no other user can reach, without a capability.

Started by root, the fallback drops each run to a uid of its own. Where its interpreter or
toolchain lies under a folder only root may search (a 0700 ``/root``: pyenv, rustup, the Scala
helper in the cache), the run used to keep ``CAP_DAC_READ_SEARCH``, which reads every file of
the machine: without Landlock a Rust, Scala or Python sample printed ``/etc/shadow`` and a 0600
file of root's, at compile time too (round 10, ``tests/test_redteam10_reads.py``). Now the run
gets one supplementary group instead, the runs' own (``RUNS_GID``, no user has it), and each
folder on the way that others may not search gets a POSIX ACL entry giving that group search
alone (``--x``: no listing, no reading; ``getfacl /root`` shows it, it stays for the next
scorer). What lies beneath is then reachable by name where others may read it (the toolchain's
files; a 0600 file stays root's). Where an ACL cannot be set (a file system without them, or
a mask that adding search would widen for other entries) the capability is kept, as before.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["RUNS_GID", "grant_search"]

RUNS_GID = 1_899_999_999  # below the runs' own uids and gids (``runuser``), no user's
_XATTR = "system.posix_acl_access"
_VERSION = 2  # linux/posix_acl_xattr.h: a header word, then (tag, perm, id) entries
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_NAMED = (0x02, _GROUP)  # ACL_USER, ACL_GROUP: entries with an id, limited by the mask
_NO_ID = 0xFFFFFFFF
_SEARCH = 1
_LOCK = threading.Lock()  # one read-modify-write of a folder's ACL at a time in this process


def grant_search(paths: Iterable[str]) -> bool:
    """Give ``RUNS_GID`` search on every folder leading to ``paths`` that others may not
    search. True when each path is then reachable by a run holding that group (and readable
    by others itself); False where that cannot be (the caller keeps the capability)."""
    folders: set[str] = set()
    try:
        for path in paths:
            real = Path(os.path.realpath(path))
            if not os.path.exists(real):
                continue
            if not os.stat(real).st_mode & (stat.S_IROTH | stat.S_IXOTH):
                return False
            folders.update(str(p) for p in real.parents if not os.stat(p).st_mode & stat.S_IXOTH)
        with _LOCK:
            return all(_add_search(folder) for folder in sorted(folders))
    except OSError:
        return False


def _add_search(folder: str) -> bool:
    """``folder``'s ACL with ``RUNS_GID`` allowed to search it; False where that would widen
    what another entry of its group class may do (its mask lacks search). A ``chmod`` of the
    folder since (pytest's of its base folder, an admin's of ``/root``) set the mask from the
    mode's group bits: the grant is looked at again at every run."""
    entries = _entries(folder)
    ours = [p for t, p, i in entries if (t, i) == (_GROUP, RUNS_GID)]
    mask = [p for t, p, _ in entries if t == _MASK]
    if ours and ours[0] & _SEARCH and mask and mask[0] & _SEARCH:
        return True
    others = [
        p for t, p, i in entries if t in (*_NAMED, _GROUP_OBJ) and (t, i) != (_GROUP, RUNS_GID)
    ]
    if mask and not mask[0] & _SEARCH and any(p & _SEARCH for p in others):
        return False
    kept = [(t, p, i) for t, p, i in entries if t != _MASK and (t, i) != (_GROUP, RUNS_GID)]
    group_class = [p for t, p, _ in kept if t in _NAMED or t == _GROUP_OBJ]
    new_mask = (mask[0] if mask else 0) | _SEARCH | (0 if mask else _union(group_class))
    kept += [(_GROUP, _SEARCH, RUNS_GID), (_MASK, new_mask, _NO_ID)]
    data = struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", t, p, i) for t, p, i in sorted(kept, key=lambda e: (e[0], e[2]))
    )
    os.setxattr(folder, _XATTR, data)
    return True


def _entries(folder: str) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of ``folder``'s access ACL; its mode's three where it has none."""
    try:
        raw = os.getxattr(folder, _XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        mode = os.stat(folder).st_mode
        return [(_USER_OBJ, mode >> 6 & 7, _NO_ID), (_GROUP_OBJ, mode >> 3 & 7, _NO_ID),
                (_OTHER, mode & 7, _NO_ID)]  # fmt: skip
    if struct.unpack_from("<I", raw)[0] != _VERSION:
        raise OSError(errno.EINVAL, f"{folder}: an ACL of another version")
    return [struct.unpack_from("<HHI", raw, at) for at in range(4, len(raw), 8)]


def _union(perms: list[int]) -> int:
    out = 0
    for perm in perms:
        out |= perm
    return out
