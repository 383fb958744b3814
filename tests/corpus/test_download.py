"""`medret corpus download` against a local HTTP server that speaks the hub's file API (no internet).

The server implements what huggingface_hub and medret call: dataset info (/api/datasets/{repo}/revision/{rev}), the
tree listing (/api/datasets/{repo}/tree/{rev}[/{path}]), and /datasets/{repo}/resolve/{rev}/{file}, which for LFS
files redirects to a "CDN" on another host name (localhost vs 127.0.0.1) the way the hub redirects to its storage,
with Range support. Faults are injected per file: drop the connection once mid-file, serve corrupted bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from medret import cli
from medret.corpus import download as dl
from medret.errors import CorpusError
from medret.fetch import files as ff
from medret.fetch.files import human_bytes
from medret.fetch.transfer import fetch_url

COMMIT = "a" * 40
REPO = "MedRAG/textbooks"


def _snippets(stem: str, n: int) -> bytes:
    lines = []
    for i in range(n):
        content = f"Paragraph {i} of {stem}: " + " ".join(f"word{j}" for j in range(i % 17 + 5))
        lines.append(json.dumps({"id": f"{stem}_{i}", "title": stem, "content": content,
                                 "contents": f"{stem}. {content}"}))
    return ("\n".join(lines) + "\n").encode()


FILES = {
    "chunk/Anatomy_Gray.jsonl": _snippets("Anatomy_Gray", 400),  # ~40 KB, LFS
    "chunk/Biochemistry_Lippincott.jsonl": _snippets("Biochemistry_Lippincott", 250),  # LFS
    "chunk/Tiny_Notes.jsonl": _snippets("Tiny_Notes", 3),  # plain git file: checked by its blob id
    "README.md": b"# textbooks\n",
}
LFS = {"chunk/Anatomy_Gray.jsonl", "chunk/Biochemistry_Lippincott.jsonl"}


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _blob(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


def _pointer(b: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(b)}\nsize {len(b)}\n".encode()


class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.drop_once: dict[str, int] = {}  # path -> byte offset after which the connection is dropped, once
        self.drop_always: set[str] = set()  # paths whose body is never sent (headers, then the connection drops)
        self.corrupt: set[str] = set()  # paths served with one byte flipped
        self.log: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, head: bool):
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.log.append({"method": self.command, "path": path, "host": self.headers.get("Host"),
                                "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")})
                pre_info = f"/api/datasets/{REPO}/revision/"
                pre_tree = f"/api/datasets/{REPO}/tree/"
                pre_resolve = f"/datasets/{REPO}/resolve/"
                if path.startswith(pre_info) or path == f"/api/datasets/{REPO}":
                    return self._json({"id": REPO, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": p} for p in sorted(hub.files)]})
                if path.startswith(pre_tree):
                    rest = path[len(pre_tree):]
                    rev, _, sub = rest.partition("/")
                    return self._json(hub.tree(sub))
                if path.startswith(pre_resolve):
                    rest = path[len(pre_resolve):]
                    rev, _, fpath = rest.partition("/")
                    if fpath not in hub.files:
                        return self._json({"error": "Entry not found"}, 404)
                    data = hub.files[fpath]
                    if fpath in LFS:  # the hub redirects LFS files to its storage host
                        host = "localhost" if "127.0.0.1" in self.headers.get("Host", "") else "127.0.0.1"
                        self.send_response(302)
                        self.send_header("Location", f"http://{host}:{hub.port}/cdn/{fpath}")
                        self.send_header("X-Repo-Commit", COMMIT)
                        self.send_header("X-Linked-Etag", f'"{_sha256(data)}"')
                        self.send_header("X-Linked-Size", str(len(data)))
                        self.send_header("ETag", f'"{_blob(_pointer(data))}"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    return self._bytes(fpath, data, head, etag=_blob(data))
                if path.startswith("/cdn/"):
                    fpath = path[len("/cdn/"):]
                    return self._bytes(fpath, hub.files[fpath], head, etag=_sha256(hub.files[fpath]))
                return self._json({"error": "not found"}, 404)

            def _bytes(self, fpath: str, data: bytes, head: bool, etag: str):
                if fpath in hub.corrupt:
                    data = bytes([data[0] ^ 0x01]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                cut = start if fpath in hub.drop_always else hub.drop_once.pop(fpath, None)
                if cut is not None and cut >= start:
                    self.wfile.write(body[: cut - start])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection mid-file
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def tree(self, sub: str) -> list[dict]:
        out = []
        if not sub:
            out.append({"type": "directory", "oid": "d" * 40, "size": 0, "path": "chunk"})
        for p, data in sorted(self.files.items()):
            if sub and not p.startswith(sub + "/"):
                continue
            entry = {"type": "file", "path": p, "size": len(data),
                     "oid": _blob(_pointer(data)) if p in LFS else _blob(data)}
            if p in LFS:
                entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": len(_pointer(data))}
            out.append(entry)
        return out

    def data_gets(self) -> list[dict]:
        """File transfers (GET on resolve for plain files, GET on the CDN for LFS files)."""
        return [e for e in self.log if e["method"] == "GET" and (e["path"].startswith("/cdn/") or
                                                                  "/resolve/" in e["path"] and "Tiny" in e["path"])]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    h = FakeHub(FILES)
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    for var in ("NO_PROXY", "no_proxy"):  # the fake hub is on loopback, never behind a proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield h
    h.close()


def chunk_files() -> dict[str, bytes]:
    return {p.split("/", 1)[1]: b for p, b in FILES.items() if p.startswith("chunk/")}


def run_cli(*argv: str) -> int:
    return cli.main(["corpus", "download", *argv, "--no-progress"])


def assert_complete(db: Path):
    chunk = db / "textbooks" / "chunk"
    assert sorted(p.name for p in chunk.iterdir()) == sorted(chunk_files())  # no partial files left
    for name, data in chunk_files().items():
        assert (chunk / name).read_bytes() == data


def test_full_download_layout_token_and_rerun(hub, tmp_path):
    db = tmp_path / "db"
    assert run_cli("Textbooks", "--db-dir", str(db)) == 0
    assert_complete(db)
    assert not (db / "textbooks" / "README.md").exists()  # only chunk/*.jsonl, MedRAG's layout
    # the token went to the hub, never to the storage host
    api = [e for e in hub.log if REPO in e["path"]]
    assert api and all(e["auth"] == "Bearer hf_test_token" for e in api)
    cdn = [e for e in hub.log if e["path"].startswith("/cdn/")]
    assert len(cdn) == 2 and all(e["auth"] is None for e in cdn)
    manifest = json.loads((db / "textbooks" / "medret" / "download.json").read_text())
    assert manifest["revision"] == COMMIT and set(manifest["files"]) == set(chunk_files())
    # a second run transfers nothing
    before = len(hub.data_gets())
    assert run_cli("textbooks", "--db-dir", str(db)) == 0
    assert len(hub.data_gets()) == before
    assert_complete(db)


def test_connection_dropped_mid_file_is_resumed_with_range(hub, tmp_path):
    name = "chunk/Anatomy_Gray.jsonl"
    cut = len(FILES[name]) // 3
    hub.drop_once[name] = cut
    db = tmp_path / "db"
    assert run_cli("Textbooks", "--db-dir", str(db)) == 0
    assert_complete(db)
    gets = [e for e in hub.log if e["method"] == "GET" and e["path"] == f"/cdn/{name}"]
    assert [g["range"] for g in gets] == [None, f"bytes={cut}-"]


def test_partial_file_from_an_earlier_run_is_resumed(hub, tmp_path):
    name = "Biochemistry_Lippincott.jsonl"
    data = chunk_files()[name]
    chunk = tmp_path / "db" / "textbooks" / "chunk"
    chunk.mkdir(parents=True)
    have = len(data) // 2 + 7
    (chunk / f".{name}.part").write_bytes(data[:have])
    assert run_cli("Textbooks", "--db-dir", str(tmp_path / "db")) == 0
    assert_complete(tmp_path / "db")
    gets = [e for e in hub.log if e["method"] == "GET" and e["path"] == f"/cdn/chunk/{name}"]
    assert [g["range"] for g in gets] == [f"bytes={have}-"]


def test_corrupted_transfer_is_detected_and_nothing_is_left(hub, tmp_path, capsys):
    hub.corrupt.add("chunk/Anatomy_Gray.jsonl")
    db = tmp_path / "db"
    assert run_cli("Textbooks", "--db-dir", str(db)) == 1
    err = capsys.readouterr().err
    assert "Anatomy_Gray.jsonl" in err and "sha256" in err and _sha256(FILES["chunk/Anatomy_Gray.jsonl"]) in err
    chunk = db / "textbooks" / "chunk"
    assert not (chunk / "Anatomy_Gray.jsonl").exists()
    assert not list(chunk.glob(".*.part"))
    # once the transfer is sound again, the same command completes
    hub.corrupt.clear()
    assert run_cli("Textbooks", "--db-dir", str(db)) == 0
    assert_complete(db)


def test_corrupted_plain_file_is_detected_by_blob_id(hub, tmp_path, capsys):
    hub.corrupt.add("chunk/Tiny_Notes.jsonl")
    assert run_cli("Textbooks", "--db-dir", str(tmp_path / "db")) == 1
    err = capsys.readouterr().err
    assert "Tiny_Notes.jsonl" in err and "blob id" in err and _blob(FILES["chunk/Tiny_Notes.jsonl"]) in err
    assert not (tmp_path / "db" / "textbooks" / "chunk" / "Tiny_Notes.jsonl").exists()


def test_pointer_files_and_damaged_local_files_are_found_and_replaced(hub, tmp_path, capsys):
    chunk = tmp_path / "db" / "textbooks" / "chunk"
    chunk.mkdir(parents=True)
    files = chunk_files()
    (chunk / "Anatomy_Gray.jsonl").write_bytes(_pointer(files["Anatomy_Gray.jsonl"]))  # git clone without lfs
    bad = bytearray(files["Biochemistry_Lippincott.jsonl"])
    bad[100] ^= 0x20  # same size, one byte off
    (chunk / "Biochemistry_Lippincott.jsonl").write_bytes(bytes(bad))
    (chunk / "Tiny_Notes.jsonl").write_bytes(files["Tiny_Notes.jsonl"])  # already right
    assert cli.main(["corpus", "download", "Textbooks", "--db-dir", str(tmp_path / "db"), "--list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    status = {f["path"]: f["status"] for f in listing["sources"][0]["files"]}
    assert status == {"chunk/Anatomy_Gray.jsonl": "pointer", "chunk/Biochemistry_Lippincott.jsonl": "checksum",
                      "chunk/Tiny_Notes.jsonl": "ok"}
    assert listing["needed_bytes"] == len(files["Anatomy_Gray.jsonl"]) + len(files["Biochemistry_Lippincott.jsonl"])
    assert not hub.data_gets()  # --list downloads nothing

    results = dl.download(["Textbooks"], tmp_path / "db", progress=False)
    assert results[0].replaced_pointers == ["Anatomy_Gray.jsonl"]
    assert sorted(results[0].fetched) == ["Anatomy_Gray.jsonl", "Biochemistry_Lippincott.jsonl"]
    assert results[0].already_ok == ["Tiny_Notes.jsonl"]
    assert_complete(tmp_path / "db")


def test_list_shows_sizes_and_refuses_without_disk_space(hub, tmp_path, monkeypatch, capsys):
    total = sum(len(b) for b in chunk_files().values())
    monkeypatch.setattr(ff, "disk_free", lambda path: total - 1)
    db = tmp_path / "db"
    assert run_cli("Textbooks", "--db-dir", str(db), "--list") == 1
    out, err = capsys.readouterr()
    assert "Anatomy_Gray.jsonl" in out and human_bytes(len(FILES["chunk/Anatomy_Gray.jsonl"])) in out
    assert "NOT ENOUGH SPACE" in out and "not enough disk space" in err
    assert run_cli("Textbooks", "--db-dir", str(db)) == 1
    err = capsys.readouterr().err
    assert "not enough disk space" in err and human_bytes(total) in err
    assert not hub.data_gets()
    assert not (db / "textbooks" / "chunk").exists() or not list((db / "textbooks" / "chunk").iterdir())
    # exactly enough room: it proceeds
    monkeypatch.setattr(ff, "disk_free", lambda path: total)
    assert run_cli("Textbooks", "--db-dir", str(db)) == 0
    assert_complete(db)


def test_offline_mode_uses_the_hf_cache_or_says_what_to_do(hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import snapshot_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = tmp_path / "db"
    assert run_cli("Textbooks", "--db-dir", str(db)) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "not in the Hugging Face cache" in err
    assert not [e for e in hub.log if e["method"] == "GET"]
    assert run_cli("Textbooks", "--db-dir", str(db), "--list") == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    # fill the cache (as a login node with internet would), then go offline again
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot_download(REPO, repo_type="dataset", endpoint=hub.endpoint, cache_dir=str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    assert run_cli("Textbooks", "--db-dir", str(db)) == 0
    assert len(hub.log) == n  # nothing asked of the network
    assert_complete(db)


def test_bad_names_and_arguments_are_refused(hub, tmp_path, capsys):
    assert run_cli("PubMedd", "--db-dir", str(tmp_path / "db")) == 1
    err = capsys.readouterr().err
    assert "PubMedd" in err and "Textbooks" in err
    assert run_cli("Textbooks", "--db-dir", str(tmp_path / "db"), "--from", str(tmp_path / "x.tar.gz")) == 1
    assert "--from" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_resolve_sources_matches_medrag_names():
    assert dl.resolve_sources(["MedCorp"]) == ["pubmed", "textbooks", "statpearls", "wikipedia"]
    assert dl.resolve_sources(["medtext", "Textbooks"]) == ["textbooks", "statpearls"]
    with pytest.raises(Exception, match="NAME"):
        dl.resolve_sources([])


def test_fetch_gives_up_after_retries_and_keeps_the_partial(hub, tmp_path):
    name = "chunk/Anatomy_Gray.jsonl"
    data = FILES[name]
    # every attempt is cut before any byte arrives
    hub.drop_always.add(name)
    final = tmp_path / "out.jsonl"
    final.with_name(f".{final.name}.part").write_bytes(data[:10])
    with pytest.raises(CorpusError, match="run the same command again"):
        fetch_url(f"{hub.endpoint}/cdn/{name}", final, expected_size=len(data), sha256=_sha256(data),
                     max_retries=0)
    assert not final.exists()
    assert final.with_name(f".{final.name}.part").read_bytes() == data[:10]


@pytest.mark.integration
def test_cli_subprocess_reads_hf_endpoint_at_import(hub, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_test_token", HF_HOME=str(tmp_path / "hh"))
    p = subprocess.run([sys.executable, "-m", "medret.cli", "corpus", "download", "Textbooks", "--db-dir",
                        str(tmp_path / "db"), "--no-progress", "--json"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(p.stdout)[0]["fetched"]) == sorted(chunk_files())
    assert_complete(tmp_path / "db")
