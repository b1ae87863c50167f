"""The keys kit's guard accepts, reread when their file changes (so a key is added or revoked
while the job runs, within a request):

- a key file: the keys themselves, one per line (the job owner's key, 0600);
- a key-hashes file: ``LABEL sha256hex`` per line (a shared service's lab keys): the job
  never holds the keys, only their SHA-256; a token is hashed and compared in constant time.

Standard library only: this file runs inside the engine's image, beside the guard.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

HASH_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\s+([0-9a-f]{64})$")


def key_hash(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class KeyFile:
    """One file of accepted credentials, parsed again whenever its (mtime, size, inode) changes;
    a missing or unreadable file accepts nothing."""

    def __init__(self, path: str, label: str = "owner", hashed: bool = False):
        self.path, self.label, self.hashed = path, label, hashed
        self.stamp = None
        self.entries: list[tuple[str, bytes]] = []  # (label, key or hex digest)

    def parse(self, data: bytes) -> list[tuple[str, bytes]]:
        lines = [line.strip() for line in data.splitlines() if line.strip() and not line.startswith(b"#")]
        if not self.hashed:
            return [(self.label, line) for line in lines]
        out = []
        for line in lines:
            m = HASH_LINE.match(line.decode("ascii", "replace"))
            if m:  # a malformed line grants nothing
                out.append((m.group(1), m.group(2).encode()))
        return out

    def current(self) -> list[tuple[str, bytes]]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self.stamp:
                with open(self.path, "rb") as f:
                    self.entries = self.parse(f.read())
                self.stamp = stamp
        except OSError:
            self.entries, self.stamp = [], None
        return self.entries

    def match(self, token: bytes) -> str | None:
        """The label of the entry that matches ``token``; every entry is compared, in constant time."""
        probe = key_hash(token).encode() if self.hashed else token
        found = None
        for label, value in self.current():
            if hmac.compare_digest(probe, value) and found is None:
                found = label
        return found


class Keys:
    """Every key file the guard accepts: ``who(header)`` is the label of the key in an
    ``Authorization: Bearer`` header, or None."""

    def __init__(self, files: list[KeyFile]):
        self.files = files

    def who(self, header: bytes | None) -> str | None:
        if not header:
            return None
        scheme, _, token = header.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        found = None
        for f in self.files:  # all files checked, whatever matched first
            label = f.match(token)
            found = found or label
        return found
