"""Child process of `medret bench`: build a retriever, answer one query, report when and at what peak RSS.

``python -m medret.bench.probe '<retriever kwargs as JSON>' '<query>' <topk>`` prints one JSON line
``{"answered_at": <time.time()>, "peak_rss_bytes": ..., "rss_bytes": ..., "n_hits": ...}``.
"""
from __future__ import annotations

import json
import resource
import sys
import time

from medret import optional
from medret.api import Retriever
from medret.config import RetrieverConfig


def _vm_hwm() -> int:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over from the parent across fork+exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str]) -> int:
    kwargs, query, topk = json.loads(argv[0]), argv[1], int(argv[2])
    r = Retriever(RetrieverConfig.from_mapping(kwargs))
    res = r.retrieve([query], topk=topk)
    answered = time.time()
    out = {"answered_at": answered, "peak_rss_bytes": _vm_hwm(),
           "rss_bytes": optional.psutil().Process().memory_info().rss, "n_hits": len(res["result"][0])}
    r.close()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
