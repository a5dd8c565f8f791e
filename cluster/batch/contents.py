"""Files' contents on a filesystem path: `<store_dir>/files/<file id>`, written first to
`<store_dir>/tmp/<file id>.part` and renamed once checked. The only name a content has on disk
is owc's own id (checked against its pattern here again), so nothing a client sends becomes a
path; files and directories are the gateway user's alone (0600/0700)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from cluster.batch.errors import BatchApiError
from cluster.batch.ids import is_file_id

CHUNK = 1 << 20


class Contents:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def path(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise ValueError(f"not an owc file id: {file_id!r}")
        return self._dir("files") / file_id

    def part(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise ValueError(f"not an owc file id: {file_id!r}")
        return self._dir("tmp") / f"{file_id}.part"

    def commit(self, file_id: str) -> None:
        os.replace(self.part(file_id), self.path(file_id))

    def remove(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)
        self.part(file_id).unlink(missing_ok=True)

    def drop_parts(self, *, older_than: float) -> int:
        """Delete part files last written before ``older_than`` (uploads a crash cut short)."""
        tmp = self.root / "tmp"
        dropped = 0
        for p in tmp.glob("*.part") if tmp.is_dir() else ():
            try:
                if p.stat().st_mtime < older_than:
                    p.unlink()
                    dropped += 1
            except FileNotFoundError:
                continue
        return dropped

    def lines(self, path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            yield from f


class Upload:
    """One upload's content as it arrives, bounded by ``max_bytes`` (413 beyond)."""

    def __init__(self, contents: Contents, file_id: str, *, max_bytes: int):
        self.id = file_id
        self.size = 0
        self.started = False
        self._contents = contents
        self._max = max_bytes
        self._f = None

    def write(self, chunk: bytes) -> None:
        if self._f is None:
            fd = os.open(self._contents.part(self.id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._f = os.fdopen(fd, "wb")
            self.started = True
        self.size += len(chunk)
        if self.size > self._max:
            self.discard()
            raise BatchApiError(413, f"the file exceeds {self._max} bytes", code="file_too_large", param="file")
        self._f.write(chunk)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def discard(self) -> None:
        self.close()
        self._contents.part(self.id).unlink(missing_ok=True)
