"""`medret models download RETRIEVER [--dir DIR]`: every model a retriever loads, for nodes without internet."""
from __future__ import annotations

import argparse
import json

from medret.encoders import download as md
from medret.encoders.specs import RERANKERS
from medret.fetch.files import human_bytes
from medret.fetch.settings import FetchOptions
from medret.options import add_flags
from medret.retrievers import retriever_choices


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="download the models a retriever needs (for compute nodes without internet)")
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    d = msub.add_parser(
        "download", help="download every model of a retriever into DIR/<model id>, verified and resumable",
        description="Download every model RETRIEVER loads (MedCPT: query and article encoders; RRF-4: Contriever, "
                    "SPECTER and both MedCPT encoders; MedCPT-Cross-Encoder: the rerank stage's cross-encoder; BM25 "
                    "or a local model folder: none) from the Hugging Face hub "
                    "into DIR/<model id>, where every medret command looks with --models-dir DIR or "
                    "MEDRET_MODELS_DIR=DIR (the default folder, ~/.cache/medret/models, needs neither). Files are "
                    "checked against the hub's sizes and checksums; interrupted downloads resume. Honours "
                    "HF_ENDPOINT, HF_TOKEN and HF_HOME.")
    d.add_argument("retriever", metavar="RETRIEVER",
                   help=f"{retriever_choices().removeprefix('BM25, ')}, 'A+B', a cross-encoder "
                        f"({', '.join(s.name for s in RERANKERS.values())}), or a local model folder")
    d.add_argument("--dir", dest="models_dir", default=None, metavar="DIR",
                   help="where to put the models (DIR/<model id>); default $MEDRET_MODELS_DIR, else "
                        "~/.cache/medret/models")
    d.add_argument("--list", action="store_true",
                   help="show the files, their sizes and what is already here; download nothing")
    d.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the saved login token)")
    d.add_argument("--retries", type=int, default=5, help="resume attempts without progress before giving up")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--json", action="store_true", help="print the plan / result as JSON")
    add_flags(d, FetchOptions)
    d.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    fetch = FetchOptions.from_args(args)
    if args.list:
        root, plans = md.plans_for(args.retriever, args.models_dir, token=args.token, options=fetch)
        if args.json:
            print(json.dumps({"dir": str(root), "models": [
                {"model_id": p.model_id, "retriever": n.retriever, "role": n.role, "revision": p.revision,
                 "dest": str(p.dest), "total_bytes": p.total_bytes, "bytes_to_fetch": p.bytes_to_fetch,
                 "files": [{"path": f.remote.path, "size": f.remote.size, "status": f.status} for f in p.files]}
                for n, p in plans]}, indent=1))
            return 0
        if not plans:
            print(f"{args.retriever}: no models to download (BM25 or a local model folder)")
        for n, p in plans:
            role = "cross-encoder" if n.role == "reranker" else f"{n.role} encoder"
            print(f"{p.model_id} ({n.retriever} {role}, @ {p.revision[:12]}) -> {p.dest}")
            for f in p.files:
                print(f"  {f.remote.name:40s} {human_bytes(f.remote.size):>10s}  {f.status}")
            print(f"  total {human_bytes(p.total_bytes)}; to fetch {human_bytes(p.bytes_to_fetch)}")
        return 0
    root, results = md.download(args.retriever, args.models_dir, token=args.token, progress=not args.no_progress,
                                max_retries=args.retries, options=fetch)
    if args.json:
        print(json.dumps({"dir": str(root), "models": [r.to_dict() for r in results]}, indent=1))
        return 0
    if not results:
        print(f"{args.retriever}: no models to download (BM25 or a local model folder)")
        return 0
    for r in results:
        print(f"{r.model_id} @ {r.revision[:12]}: {len(r.fetched)} fetched ({human_bytes(r.bytes_fetched)}), "
              f"{len(r.already_ok)} already ok -> {r.dest}")
    print(f"offline use: --models-dir {root} (or MEDRET_MODELS_DIR={root}) on every medret command, or "
          f"models_dir={str(root)!r} in Python / the trainer's retriever block")
    return 0
