"""StatPearls chunking on a synthetic archive built here with the structure of NCBI's statpearls_NBK430685.tar.gz.

Expected snippets are written out by hand from the chunking rules (one snippet per paragraph; a paragraph under 200
characters joins the previous snippet when both stay under 1,000; lists joined or split per item; subsection
headings are paragraphs holding only <bold>; titles "Article -- Section -- Subsection"; ids "<stem>_<n>").
"""
from __future__ import annotations

import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medret import cli
from medret.corpus.statpearls import chunk_archive, chunk_article

LONG1 = "Acute kidney injury is a sudden decrease in kidney function. " * 5  # 305 chars with trailing space
LONG1 = LONG1.strip()
SHORT1 = "It is common in hospitalized patients."
SHORT2 = "Mortality is high."
LONG2 = "B" * 980
SHORT3 = "Short after a long one."
ITEM = "Item text number {} that is long enough to matter in the join of this list." + " pad" * 60


def article(title: str, body: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE book-part-wrapper PUBLIC "-//NLM//DTD BITS Book Interchange DTD v2.0 20151225//EN" "BITS-book2.dtd">
<book-part-wrapper xmlns:xlink="http://www.w3.org/1999/xlink" dtd-version="2.0">
  <book-meta><book-title-group><book-title>StatPearls</book-title></book-title-group></book-meta>
  <book-part book-part-type="chapter" id="article-17000">
    <book-part-meta><title-group><title>{title}</title></title-group></book-part-meta>
    <body>{body}</body>
  </book-part>
</book-part-wrapper>""".encode()


AKI = article("Acute Kidney Injury", f"""
  <sec id="s1"><title>Introduction</title>
    <p>{LONG1}</p>
    <p>{SHORT1}</p>
    <p>{SHORT2}</p>
    <p>{LONG2}</p>
    <p>{SHORT3}</p>
    <fig id="f1"><caption><p>Figure text is not a snippet.</p></caption></fig>
  </sec>
  <sec id="s2"><title> Etiology </title>
    <p>Causes are <italic>prerenal</italic>, intrinsic <xref ref-type="bibr" rid="b1">[1]</xref> and postrenal.</p>
    <p><bold>Prerenal Causes</bold></p>
    <p>Hypovolemia.</p>
    <p>Heart failure.</p>
    <p><bold>Drug Lists</bold></p>
    <list list-type="bullet"><list-item><p>NSAIDs</p></list-item><list-item><p>ACE inhibitors</p></list-item></list>
    <p>After the list the subsection heading is gone.</p>
    <sec id="s2a"><title>Intrinsic</title>
      <p>Acute tubular necrosis is the most common intrinsic cause.</p>
    </sec>
  </sec>
  <sec id="s3"><title>Long List</title>
    <p>Intro to the long list.</p>
    <list list-type="bullet">{"".join(f"<list-item><p>{ITEM.format(i)}</p></list-item>" for i in range(4))}</list>
    <p>Tail paragraph.</p>
  </sec>
""")

QUESTION = article("Why Screen?", """
  <sec><title>Review Questions</title><p>Is screening useful?</p></sec>""")
EMPTY = article("Empty Article", "<sec><title>Nothing</title><fig><caption><p>x</p></caption></fig></sec>")


def expected_aki() -> list[dict]:
    t = "Acute Kidney Injury"
    rows = [
        (f"{t} -- Introduction", f"{LONG1} {SHORT1} {SHORT2}"),
        (f"{t} -- Introduction", LONG2),  # 980 chars: the next short paragraph would reach 1,000
        (f"{t} -- Introduction", SHORT3),
        (f"{t} -- Etiology", "Causes are prerenal , intrinsic [1] and postrenal."),
        (f"{t} -- Etiology -- Prerenal Causes", "Hypovolemia. Heart failure."),
        # a list right after a heading ends the subsection, but the short paragraph after it joins the list's snippet
        (f"{t} -- Etiology -- Drug Lists", "NSAIDs ACE inhibitors After the list the subsection heading is gone."),
        (f"{t} -- Intrinsic", "Acute tubular necrosis is the most common intrinsic cause."),
        (f"{t} -- Long List", "Intro to the long list."),
        *[(f"{t} -- Long List", ITEM.format(i)) for i in range(4)],
        (f"{t} -- Long List", "Tail paragraph."),
    ]
    out = []
    for i, (title, content) in enumerate(rows):
        sep = " " if title.endswith((".", "?", "!")) else ". "
        out.append({"id": f"article-17000_{i}", "title": title, "content": content,
                    "contents": f"{title}{sep}{content}"})
    return out


def test_article_rules():
    got = chunk_article(AKI, "article-17000")
    assert got == expected_aki()
    # the 1,000 character bound is strict on the sum without the joining space
    assert len(LONG2 + SHORT3) >= 1000 and len(LONG1 + SHORT1 + SHORT2) < 1000
    assert len(" ".join(ITEM.format(i) for i in range(4))) >= 1000


def test_contents_after_a_question_mark_title():
    got = chunk_article(QUESTION, "article-2")
    assert got == [{"id": "article-2_0", "title": "Why Screen? -- Review Questions",
                    "content": "Is screening useful?",
                    "contents": "Why Screen? -- Review Questions. Is screening useful?"}]
    # the title ending decides the separator: a section ending in "?" joins with a space
    q2 = article("Quiz", "<sec><title>Which drug?</title><p>Metformin.</p></sec>")
    assert chunk_article(q2, "a")[0]["contents"] == "Quiz -- Which drug? Metformin."


def test_merge_bound_is_on_the_sum_without_the_joining_space():
    first, short = "a" * 900, "b" * 99  # 999 characters together, 1,000 with the space
    xml = article("T", f"<sec><title>S</title><p>{first}</p><p>{short}</p><p>{first}</p><p>{'c' * 100}</p></sec>")
    got = chunk_article(xml, "a")
    assert [g["content"] for g in got] == [f"{first} {short}", first, "c" * 100]


def test_long_single_paragraph_stays_whole_and_title_subheading_resets():
    long_p = "x" * 1500
    xml = article("T", f"<sec><title>S</title><p>{long_p}</p><p>short</p>"
                       "<p><bold>Sub</bold></p><p>under sub</p></sec>")
    got = chunk_article(xml, "a")
    assert [(g["title"], g["content"]) for g in got] == [("T -- S", long_p), ("T -- S", "short"),
                                                          ("T -- S -- Sub", "under sub")]


def build_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def archive_members() -> dict[str, bytes]:
    root = "statpearls_NBK430685/"
    return {root + "article-17000.nxml": AKI, root + "article-2.nxml": QUESTION, root + "article-9.nxml": EMPTY,
            root + "article-bad.nxml": b"<book-part-wrapper><sec><title>unclosed", root + "readme.txt": b"hi"}


def read_chunk_dir(d: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text().split("\n")] for p in sorted(d.glob("*.jsonl"))}


def test_archive_to_chunk_files(tmp_path):
    arc = build_archive(tmp_path / "sp.tar.gz", archive_members())
    stats = chunk_archive(arc, tmp_path / "chunk")
    assert (stats.articles, stats.files, stats.skipped) == (4, 2, 1)
    assert stats.snippets == len(expected_aki()) + 1
    files = read_chunk_dir(tmp_path / "chunk")
    assert files == {"article-17000.jsonl": expected_aki(), "article-2.jsonl": chunk_article(QUESTION, "article-2")}
    # MedRAG's file format: one JSON object a line, keys in its order, no trailing newline
    text = (tmp_path / "chunk" / "article-2.jsonl").read_text()
    assert not text.endswith("\n") and text.startswith('{"id": "article-2_0", "title": ')


def test_cli_from_file_and_bad_archive(tmp_path, capsys):
    arc = build_archive(tmp_path / "statpearls_NBK430685.tar.gz", archive_members())
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--from", str(arc),
                     "--no-progress"]) == 0
    assert read_chunk_dir(db / "statpearls" / "chunk")["article-17000.jsonl"] == expected_aki()
    manifest = json.loads((db / "statpearls" / "medret" / "download.json").read_text())
    assert manifest["snippets"] == len(expected_aki()) + 1
    # a file that is not a tar archive: clear error, the existing chunks stay as they were
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--from", str(bad),
                     "--no-progress"]) == 1
    assert "not a readable tar archive" in capsys.readouterr().err
    assert read_chunk_dir(db / "statpearls" / "chunk")["article-17000.jsonl"] == expected_aki()
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--from", str(tmp_path / "nope"),
                     "--no-progress"]) == 1
    assert "--from" in capsys.readouterr().err


@pytest.fixture
def archive_server(tmp_path):
    data = build_archive(tmp_path / "served.tar.gz", archive_members()).read_bytes()
    seen: list[tuple[str, str | None]] = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_HEAD(self):
            seen.append(("HEAD", None))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self):
            rng = self.headers.get("Range")
            seen.append(("GET", rng))
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(data[start:])

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/statpearls_NBK430685.tar.gz", data, seen
    srv.shutdown()
    srv.server_close()


def test_download_archive_over_http_with_resume(archive_server, tmp_path, monkeypatch):
    url, data, seen = archive_server
    db = tmp_path / "db"
    part = db / "statpearls" / ".statpearls_NBK430685.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])  # an earlier run stopped after 100 bytes
    monkeypatch.setenv("MEDRET_STATPEARLS_URL", url)
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--no-progress"]) == 0
    assert ("GET", "bytes=100-") in seen
    assert (db / "statpearls" / "statpearls_NBK430685.tar.gz").read_bytes() == data
    assert read_chunk_dir(db / "statpearls" / "chunk")["article-17000.jsonl"] == expected_aki()
    # a second run finds the archive chunked already: no transfer, chunks untouched
    n = len(seen)
    mtime = (db / "statpearls" / "chunk" / "article-17000.jsonl").stat().st_mtime_ns
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--no-progress"]) == 0
    assert len(seen) == n
    assert (db / "statpearls" / "chunk" / "article-17000.jsonl").stat().st_mtime_ns == mtime
    # --force fetches and chunks again
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(db), "--no-progress", "--force"]) == 0
    assert [g for g in seen[n:] if g[0] == "GET"] == [("GET", None)]
    assert read_chunk_dir(db / "statpearls" / "chunk")["article-17000.jsonl"] == expected_aki()
