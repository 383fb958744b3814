"""Downloads never lie about what they unpacked (issue 24 item 12): every archive is checked whole before anything
is marked complete; a damaged one that medret downloaded is deleted, so the next run starts clean; one line says
what happened. Archives are built here with the standard library and served from loopback servers.

Before: an embeddings zip with broken deflate / deflate64 / the encrypted flag gave a raw ``zlib.error`` /
``NotImplementedError`` and was kept; a StatPearls archive with one flipped byte exited 0 with part of the
articles; a truncated one gave a raw ``EOFError``; a gzip bomb took its whole member into memory; an endless body
with no size filled the disk."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medret import cli
from medret.corpus import embeddings as emb
from medret.storage import vectors
from tests.fetch.helpers import run_medret, statpearls_archive
from tests.hubfake import EndlessServer, FakeHub, hub_env

MODEL = "ncbi/MedCPT-Article-Encoder"
STEMS = {"Anatomy_Gray": 7, "Pharmacology_Katzung": 9}
ARCHIVE_PATH = f"textbooks/{MODEL}/embedding.zip"
SP = "statpearls_NBK430685.tar.gz"


def chunk_bytes(stem: str, n: int) -> bytes:
    return "".join(json.dumps({"id": f"{stem}_{i}", "title": stem, "content": f"text {i}"}) + "\n"
                   for i in range(n)).encode()


def embeddings_zip(method: int = zipfile.ZIP_DEFLATED) -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for stem, n in STEMS.items():
            npy = io.BytesIO()
            np.save(npy, rng.standard_normal((n, 8)).astype(np.float32))
            z.writestr(f"embedding/{stem}.npy", npy.getvalue())
    return buf.getvalue()


def patch_zip(data: bytes, *, method: int | None = None, flags: int | None = None,
              first_data_byte: int | None = None) -> bytes:
    """The same zip with every member's compression method / general-purpose flags set in its local and central
    headers (APPNOTE 4.3.7, 4.3.12), or the first byte of the first member's compressed data replaced."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        cd_start = struct.unpack("<I", data[-6:-2])[0]  # end of central directory: its offset (no comment here)
    pos = cd_start
    for info in infos:
        local = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[local + 26:local + 30])
        if method is not None:
            struct.pack_into("<H", out, local + 8, method)
            struct.pack_into("<H", out, pos + 10, method)
        if flags is not None:
            struct.pack_into("<H", out, local + 6, flags)
            struct.pack_into("<H", out, pos + 8, flags)
        if first_data_byte is not None and info is infos[0]:
            out[local + 30 + name_len + extra_len] = first_data_byte
        n, m, k = struct.unpack("<HHH", data[pos + 28:pos + 34])
        pos += 46 + n + m + k
    return bytes(out)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    chunks = {f"chunk/{stem}.jsonl": chunk_bytes(stem, n) for stem, n in STEMS.items()}
    h = FakeHub({("dataset", "MedRAG/textbooks"): chunks}, static={ARCHIVE_PATH: embeddings_zip()})
    hub_env(monkeypatch, h.endpoint, tmp_path / "hf_home")
    monkeypatch.setenv(emb.MIRROR_ENV, f"{h.endpoint}/mirror")
    yield h
    h.close()


def index_dir(db: Path) -> Path:
    return db / "textbooks" / "index" / MODEL


def download_embeddings(db: Path, capsys) -> tuple[int, list[str]]:
    rc = cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--embeddings", "MedCPT",
                   "--no-progress"])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_intact_zip_still_unpacks(hub, tmp_path, capsys):
    db = tmp_path / "db"
    assert download_embeddings(db, capsys)[0] == 0
    # the unpacked files, and the record that every vector in them was checked (medret.storage.vectors)
    expected = sorted([f"{s}.npy" for s in STEMS] + [vectors.RECORD])
    assert sorted(p.name for p in (index_dir(db) / "embedding").iterdir()) == expected


@pytest.mark.parametrize("case, damaged, words", [
    ("broken deflate", True, "is damaged (error: "),  # zlib's "invalid block type"
    ("encrypted flag", True, "is encrypted"),
    ("deflate64", False, "method 9 (deflate64)"),
])
def test_zip_that_cannot_be_unpacked_is_refused_in_one_line(hub, tmp_path, capsys, case, damaged, words):
    good = embeddings_zip()
    bad = {"broken deflate": patch_zip(good, first_data_byte=0xFF), "encrypted flag": patch_zip(good, flags=0x1),
           "deflate64": patch_zip(good, method=9)}[case]
    hub.static[ARCHIVE_PATH] = bad
    db = tmp_path / "db"
    rc, err = download_embeddings(db, capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("medret: error: ") and words in err[0]
    assert not (index_dir(db) / "embedding").exists()  # nothing unpacked, nothing recorded
    assert not (index_dir(db) / emb.RECORD).exists()
    leftovers = sorted(p.name for p in index_dir(db).iterdir())
    if damaged:  # deleted: the next run starts clean
        assert leftovers == [] and "was deleted" in err[0] and "run the same command again" in err[0]
        hub.static[ARCHIVE_PATH] = good
        assert download_embeddings(db, capsys)[0] == 0
        assert (index_dir(db) / "embedding" / "Anatomy_Gray.npy").is_file()
    else:  # a method Python lacks: kept (downloading it again would not help), with the way to unpack it by hand
        assert leftovers == ["embedding.zip"] and "was kept" in err[0] and "unzip -j" in err[0]


def serve_statpearls(hub: FakeHub, data: bytes) -> str:
    hub.static[SP] = data
    return f"{hub.endpoint}/mirror/{SP}"


def chunk_statpearls(db: Path, url: str, capsys, *extra: str) -> tuple[int, list[str]]:
    rc = cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--statpearls-url", url,
                   "--no-progress", *extra])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_statpearls_with_one_flipped_byte_fails_and_is_deleted(hub, tmp_path, capsys):
    data = statpearls_archive(300)
    db = tmp_path / "db"
    hub.flip[f"/blob/{SP}"] = len(data) // 2  # one bit of the compressed stream, in the middle
    rc, err = chunk_statpearls(db, serve_statpearls(hub, data), capsys)
    assert rc == 1, err  # was: exit 0 with the articles before the damage
    # (tar's reader stops at the garbled header as if the archive ended there: the end-of-archive check sees it)
    assert len(err) == 1 and "damaged" in err[0] and "archive was deleted" in err[0], err
    assert sorted(p.name for p in (db / "statpearls").iterdir()) == []  # no chunks, no archive, no .part, no record
    del hub.flip[f"/blob/{SP}"]
    rc, err = chunk_statpearls(db, serve_statpearls(hub, data), capsys)
    assert rc == 0, err
    assert len(list((db / "statpearls" / "chunk").glob("*.jsonl"))) == 300


def test_truncated_statpearls_archive(hub, tmp_path, capsys):
    data = statpearls_archive(300)
    cut = data[: len(data) * 2 // 3]
    db = tmp_path / "db"
    rc, err = chunk_statpearls(db, serve_statpearls(hub, cut), capsys)  # the host announces the truncated size
    assert rc == 1 and len(err) == 1 and "is damaged" in err[0] and "archive was deleted" in err[0], err
    assert sorted(p.name for p in (db / "statpearls").iterdir()) == []
    # a truncated copy given with --from is the user's: refused, left where it is
    mine = tmp_path / SP
    mine.write_bytes(cut)
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--from", str(mine),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "undamaged copy" in err[0] and mine.read_bytes() == cut
    assert not (db / "statpearls" / "chunk").exists()


def test_tar_without_its_end_block_is_refused(tmp_path, capsys):
    """Cut exactly after a member (tar's own reader then ends silently): only the end-of-archive check sees it."""
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tf:  # plain tar: no compressed stream to check
        for i in range(5):
            data = b"<x/>"
            ti = tarfile.TarInfo(f"a/article-{i}.nxml")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    cut = full.getvalue()[: 3 * 1024]  # three members of 512 + 512 bytes, no end blocks
    arc = tmp_path / SP
    arc.write_bytes(cut)
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--from", str(arc),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no tar end-of-archive block after 3 members" in err and not (db / "statpearls" / "chunk").exists()


class _Zeros:
    def __init__(self, n: int):
        self.left = n

    def read(self, k: int = -1) -> bytes:
        k = self.left if k < 0 else min(k, self.left)
        self.left -= k
        return bytes(k)


def test_gzip_bomb_is_refused_by_the_member_cap_with_bounded_memory(tmp_path):
    # what the same command takes to unpack a small good archive, run first: medret's imports differ by environment
    # (~60 MB in dev, ~120 MB in Search-R1's) and their first import in a fresh checkout also compiles them
    small = tmp_path / "small" / SP
    small.parent.mkdir()
    small.write_bytes(statpearls_archive(20))
    good = run_medret("corpus", "download", "StatPearls", "--db-dir", str(tmp_path / "small-db"), "--from", str(small),
                      "--no-progress", env={"MEDRET_CACHE": str(tmp_path / "cache")})
    assert good.rc == 0, good.stderr[-2000:]
    size = 160 * 1024 * 1024  # one 160 MiB member; the archive is ~0.7 MB
    bomb = tmp_path / SP
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tf:
        ti = tarfile.TarInfo("statpearls_NBK430685/article-1.nxml")
        ti.size = size
        tf.addfile(ti, _Zeros(size))
    assert bomb.stat().st_size < 2 * 1024 * 1024
    run = run_medret("corpus", "download", "StatPearls", "--db-dir", str(tmp_path / "db"), "--from", str(bomb),
                     "--no-progress", env={"MEDRET_CACHE": str(tmp_path / "cache")})
    lines = run.stderr.strip().splitlines()
    assert run.rc == 1 and len(lines) == 1, run.stderr[-2000:]
    assert "article-1.nxml of 167.8 MB, more than the 67.1 MB a member may have" in lines[0]
    # never decompressed: the child's peak memory stays within a few MB of the small archive's, far below the member
    assert run.max_rss_bytes < good.max_rss_bytes + 32 * 1024 * 1024, (run.max_rss_bytes, good.max_rss_bytes)
    assert not (tmp_path / "db" / "statpearls" / "chunk").exists()


def test_endless_body_without_a_size_is_stopped_by_the_configured_maximum(tmp_path):
    with EndlessServer() as endless:
        db = tmp_path / "db"
        run = run_medret("corpus", "download", "StatPearls", "--db-dir", str(db), "--statpearls-url",
                         f"{endless.endpoint}/{SP}", "--max-download-bytes", "5000000", "--no-progress",
                         env={"MEDRET_CACHE": str(tmp_path / "cache")}, limit=60)
        lines = run.stderr.strip().splitlines()
        assert run.rc == 1 and len(lines) == 1, run.stderr[-2000:]
        assert "announced no size" in lines[0] and "--max-download-bytes=5000000" in lines[0]
        assert "partial file was deleted" in lines[0]
        assert sorted(p.name for p in (db / "statpearls").iterdir()) == []  # no .part left to fill the disk
        assert endless.sent < 50_000_000  # stopped at the cap, not at the disk's end


def test_full_disk_during_a_download_deletes_the_partial_file(tmp_path, capsys):
    from tests.storage.test_storage_errors import tmpfs

    with EndlessServer() as endless, tmpfs(tmp_path / "small", "1m") as db:
        rc = cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--statpearls-url",
                       f"{endless.endpoint}/{SP}", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, err
        assert "is full" in err[0] and "partial file was deleted" in err[0] and "--db-dir" in err[0]
        assert sorted(p.name for p in (db / "statpearls").iterdir()) == []  # the disk is free again
