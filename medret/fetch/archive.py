"""Archives read whole before anything they hold is used, member by member under a size cap.

* **tar** (plain, gzip, bzip2 or xz: told by the first bytes): read as one forward stream; every member's size is
  checked against the cap from its header, before a byte of it is decompressed (a gzip bomb costs nothing); then
  the archive must end with tar's end-of-archive block (a truncated archive does not: tarfile itself stops
  silently at the first damaged header, which is how a StatPearls archive with one flipped byte gave 139 of 300
  articles), and the compressed stream is read to its end so its own check runs (gzip's CRC-32 and length,
  bzip2's CRCs, xz's check).
* **zip**: every member taken must be stored or deflated (bzip2 and lzma too: Python reads them), not encrypted,
  and under the cap, checked before anything is unpacked; each is copied in blocks and its CRC-32 checked at its
  end.

Problems are :class:`ArchiveError`; ``damaged`` says whether the archive itself is bad (a download should delete it
so the next run starts clean) or only unreadable here (a zip method Python lacks: kept, to unpack by hand).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from medret.errors import CorpusError
from medret.fetch.files import human_bytes

_BLOCK = tarfile.BLOCKSIZE
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
#: zip compression methods by number (APPNOTE 4.4.5) for messages; those Python reads are ZIP_READABLE
ZIP_METHODS = {0: "stored", 1: "shrink", 6: "implode", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma",
               93: "zstandard", 95: "xz", 98: "ppmd", 99: "WinZip AES"}
ZIP_READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


class ArchiveError(CorpusError):
    """An archive that cannot be used: ``damaged`` (delete it) or only unreadable here (keep it)."""

    def __init__(self, message: str, damaged: bool = True):
        super().__init__(message)
        self.damaged = damaged


class _LastRead:
    """A file object that remembers what its last ``read`` returned (the block tarfile took for a header)."""

    def __init__(self, f: Any):
        self._f = f
        self.last = b""

    def read(self, n: int = -1) -> bytes:
        self.last = self._f.read(n)
        return self.last

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()


def open_decompressed(path: Path) -> Any:
    """``path`` as a stream of its decompressed bytes: gzip, bzip2 or xz by their magic bytes, else as it is."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(path, "rb")
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(path, "rb")
    return open(path, "rb")


def tar_members(path: Path, want: Callable[[tarfile.TarInfo], bool],
                max_member_bytes: int) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """``(member, its bytes)`` for each member of the tar archive ``path`` that ``want`` picks, in archive order,
    each at most ``max_member_bytes``; after the last one the archive is checked whole (see the module docstring).
    Raises :class:`ArchiveError` for a damaged, truncated or oversized archive."""
    path = Path(path)
    try:
        with open_decompressed(path) as raw:
            src = _LastRead(raw)
            try:
                tar = tarfile.open(fileobj=src, mode="r:")  # type: ignore[call-overload]
            except _READ_ERRORS as e:
                raise ArchiveError(f"{path} is not a readable tar archive ({type(e).__name__}: {e})") from None
            for m in tar:
                if not want(m):
                    continue
                if m.size > max_member_bytes:
                    raise ArchiveError(f"{path} holds {m.name} of {human_bytes(m.size)}, more than the "
                                       f"{human_bytes(max_member_bytes)} a member may have: it is not the expected "
                                       "archive (or a decompression bomb)")
                f = tar.extractfile(m)
                data = f.read(m.size) if f is not None else b""
                if len(data) != m.size:
                    raise ArchiveError(f"{path} ends inside {m.name}: the archive is truncated")
                yield m, data
            end = tar.offset
            if src.tell() != end + _BLOCK or src.last != bytes(_BLOCK):
                raise ArchiveError(f"{path} has no tar end-of-archive block after {len(tar.members)} members (at "
                                   f"byte {end} of its contents): it is truncated or damaged")
            while raw.read(1 << 20):  # to the end of the compressed stream: its CRC / length check runs there
                pass
    except ArchiveError:
        raise
    except _READ_ERRORS as e:
        raise ArchiveError(f"{path} is damaged ({type(e).__name__}: {str(e) or 'unexpected end'})") from None


def zip_member_problem(m: zipfile.ZipInfo, max_member_bytes: int) -> ArchiveError | None:
    """Why ``m`` cannot be unpacked, checked before anything is: encrypted, a method Python cannot read, or over
    the size cap; None when it can."""
    if m.flag_bits & 0x1:
        return ArchiveError(f"{m.filename} is encrypted: MedRAG's archives are not, so this is not the expected "
                            "archive")
    if m.compress_type not in ZIP_READABLE:
        method = ZIP_METHODS.get(m.compress_type, "unknown")
        return ArchiveError(f"{m.filename} is compressed with method {m.compress_type} ({method}), which Python's "
                            "zipfile cannot read", damaged=False)
    if m.file_size > max_member_bytes:
        return ArchiveError(f"{m.filename} unpacks to {human_bytes(m.file_size)}, more than the "
                            f"{human_bytes(max_member_bytes)} a member may have (--max-member-bytes)")
    return None


def copy_zip_member(z: zipfile.ZipFile, m: zipfile.ZipInfo, dest: Path) -> None:
    """Unpack ``m`` into ``dest`` in blocks; its CRC-32 is checked when its end is read. ArchiveError when its
    data are damaged."""
    try:
        with z.open(m) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
    except (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError) as e:
        raise ArchiveError(f"{m.filename} is damaged ({type(e).__name__}: {e})") from None
    except (NotImplementedError, RuntimeError) as e:  # checked before; a header that says otherwise is damaged
        raise ArchiveError(f"{m.filename} cannot be read ({type(e).__name__}: {e})") from None
