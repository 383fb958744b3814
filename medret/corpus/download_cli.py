"""`medret corpus download NAME... --db-dir DIR`: MedRAG's corpora from the hub, StatPearls from NCBI."""
from __future__ import annotations

import argparse
import json
import sys

from medret.corpus import download as dl
from medret.corpus.embeddings import (
    download_embeddings,
    embedding_specs,
    plan_embeddings,
)
from medret.corpus.registry import DISPLAY
from medret.encoders.specs import get_spec
from medret.errors import ConfigError
from medret.fetch import files as ff
from medret.fetch.files import human_bytes
from medret.fetch.settings import FetchOptions
from medret.options import add_flags


def register_corpus(corpus_sub: argparse._SubParsersAction) -> None:
    p = corpus_sub.add_parser(
        "download", help="download MedRAG's corpora (hub) and chunk StatPearls (NCBI), verified and resumable",
        description="Download PubMed, Textbooks, Wikipedia (Hugging Face datasets MedRAG/*) and StatPearls (NCBI "
                    "archive, chunked locally) into MedRAG's layout DB_DIR/<name>/chunk/*.jsonl. Interrupted "
                    "downloads resume; files are checked against the hub's sizes and checksums; git-lfs pointer "
                    "files are replaced. Honours HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE.")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="PubMed, Textbooks, Wikipedia, StatPearls, MedText (Textbooks+StatPearls), MedCorp (all)")
    p.add_argument("--db-dir", required=True, help="folder that holds the corpora (MedRAG's DB_DIR)")
    p.add_argument("--list", action="store_true",
                   help="show the files, their sizes, what is already here and the disk space needed; download nothing")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit; default: main)")
    p.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    p.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                   help="StatPearls: use this local statpearls_NBK430685.tar.gz instead of downloading it")
    p.add_argument("--statpearls-url", default=None,
                   help="StatPearls archive URL (default: NCBI's, or MEDRET_STATPEARLS_URL)")
    p.add_argument("--force", action="store_true",
                   help="StatPearls: fetch the archive again and re-chunk it even if nothing changed")
    p.add_argument("--embeddings", action="append", default=None, metavar="RETRIEVER",
                   help="also MedRAG's precomputed document embeddings for RETRIEVER (MedCPT, Contriever, SPECTER, "
                        "RRF-2, RRF-4; repeatable), unpacked into DB_DIR/<source>/index/<doc model>/embedding/ "
                        "(PubMed, Textbooks, Wikipedia; MedRAG publishes none for StatPearls)")
    p.add_argument("--embeddings-mirror", default=None, metavar="URL",
                   help="fetch the embedding archives from URL/<source>/<doc model id>/embedding.zip instead of "
                        "MedRAG's hosts (default: MEDRET_EMBEDDINGS_MIRROR)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep each embedding.zip after unpacking it (default: delete it)")
    p.add_argument("--retries", type=int, default=5, help="resume attempts without progress before giving up")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the plan / result as JSON")
    add_flags(p, FetchOptions)
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    if args.retries < 0:
        raise ConfigError(f"--retries={args.retries} is invalid: give 0 or more")
    fetch = FetchOptions.from_args(args)
    if args.embeddings:
        embedding_specs(args.embeddings)  # refuse a bad name before downloading anything
    if args.list:
        return _list(args, fetch)
    results = dl.download(args.names, args.db_dir, revision=args.revision, token=args.token,
                          from_file=args.from_file, statpearls_url=args.statpearls_url,
                          progress=not args.no_progress, max_retries=args.retries, force=args.force, options=fetch)
    embedded = []
    if args.embeddings:
        embedded = download_embeddings(dl.resolve_sources(args.names), args.embeddings, args.db_dir,
                                       mirror=args.embeddings_mirror, progress=not args.no_progress,
                                       max_retries=args.retries, keep_archive=args.keep_archives, options=fetch)
    if args.json:
        if args.embeddings:
            print(json.dumps({"corpora": [r.to_dict() for r in results],
                              "embeddings": [e.to_dict() for e in embedded]}, indent=1))
        else:
            print(json.dumps([r.to_dict() for r in results], indent=1))
        return 0
    for r in results:
        parts = [f"{len(r.fetched)} fetched ({human_bytes(r.bytes_fetched)})", f"{len(r.already_ok)} already ok"]
        if r.replaced_pointers:
            parts.append(f"{len(r.replaced_pointers)} git-lfs pointer files replaced")
        if r.snippets is not None:
            parts.append(f"{r.snippets} snippets")
        print(f"{r.source}: {', '.join(parts)} -> {r.dest}/chunk")
    for e in embedded:
        if e.status == "unavailable":
            spec = get_spec(e.doc_model)
            name = spec.name if spec is not None else e.doc_model
            print(f"{e.source}: MedRAG publishes no {name} embeddings; build them with `medret index build "
                  f"--corpus {DISPLAY[e.source]} --retriever {name} --db-dir {args.db_dir} --device cuda:0`")
            continue
        what = {"fetched": f"fetched ({human_bytes(e.bytes_fetched)}) and unpacked", "already": "already here",
                "adopted": "already here (checked)"}[e.status]
        print(f"{e.source}: {e.doc_model} embeddings {what}: {e.files} files, {e.rows} rows -> {e.dest}")
    return 0


def _list(args: argparse.Namespace, fetch: FetchOptions) -> int:
    sources = dl.resolve_sources(args.names)
    hub = [s for s in sources if s in dl.HUB_REPOS]
    plans = [dl.plan_source(s, args.db_dir, revision=args.revision, token=args.token, options=fetch) for s in hub]
    emb = []
    if args.embeddings:
        emb = plan_embeddings(sources, args.embeddings, args.db_dir, args.embeddings_mirror, options=fetch)
    needed = sum(p.bytes_to_fetch for p in plans) + sum(e["estimated_bytes"] for e in emb)
    free = ff.disk_free(plans[0].dest) if plans else ff.disk_free(args.db_dir)
    enough = free >= needed
    if args.json:
        out = {"sources": [{"source": p.source, "repo_id": p.repo_id, "revision": p.revision, "dest": str(p.dest),
                            "total_bytes": p.total_bytes, "bytes_to_fetch": p.bytes_to_fetch,
                            "files": [{"path": f.remote.path, "size": f.remote.size, "status": f.status,
                                       "sha256": f.remote.sha256} for f in p.files],
                            "extra_local": p.extra_local} for p in plans],
               "statpearls": "statpearls" in sources, "embeddings": emb, "needed_bytes": needed, "free_bytes": free,
               "enough_space": enough}
        print(json.dumps(out, indent=1))
    else:
        for p in plans:
            print(f"{DISPLAY[p.source]} ({p.repo_id} @ {p.revision[:12]}) -> {p.dest}/chunk")
            for f in p.files:
                print(f"  {f.remote.name:40s} {human_bytes(f.remote.size):>10s}  {f.status}")
            print(f"  total {human_bytes(p.total_bytes)} in {len(p.files)} files; to fetch "
                  f"{human_bytes(p.bytes_to_fetch)} ({len(p.to_fetch)} files)")
            for name in p.extra_local:
                print(f"  warning: local {name} is not on the hub")
        if "statpearls" in sources:
            print(f"StatPearls: {dl.statpearls_url(args.statpearls_url)} (about 3x its size needed), chunked "
                  "locally")
        for e in emb:
            if e["status"] == "unavailable":
                print(f"{DISPLAY[e['source']]}: MedRAG publishes no {e['doc_model']} embeddings")
            else:
                print(f"{DISPLAY[e['source']]}: {e['doc_model']} embeddings -> {e['dest']}: {e['status']}"
                      + (f", about {human_bytes(e['estimated_bytes'])} with the archive ("
                         + ("the host's size" if e["size_from"] == "host" else "estimated from MedRAG's snippet "
                            "counts: the host gave no size") + ")" if e["estimated_bytes"] else "")
                      + f"\n  {e['url']}")
        print(f"needed {human_bytes(needed)}, free {human_bytes(free)}: "
              + ("enough space" if enough else "NOT ENOUGH SPACE"))
    if not enough:
        print(f"medret: error: not enough disk space for the download: needs {human_bytes(needed)}, "
              f"{human_bytes(free)} free; free space or choose another --db-dir", file=sys.stderr)
        return 1
    return 0
