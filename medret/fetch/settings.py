"""The deadlines and size caps of every download, each declared once (``medret corpus download`` and ``medret
models download`` derive their flags from these fields)."""
from __future__ import annotations

from dataclasses import dataclass

from medret.options import Options, option
from medret.validate import check_number, check_whole

DOWNLOAD = "network deadlines and size caps"


@dataclass(frozen=True)
class FetchOptions(Options):
    """How long a host may keep a download waiting, and how much it may send."""

    timeout: float = option(30.0, "seconds to connect to a host and the longest wait for its next bytes; a host "
                            "that stays silent longer stops the download with one line naming it",
                            check=check_number.positive().at_most(86400), metavar="S", group=DOWNLOAD)
    max_download_bytes: int = option(256 * 1024 ** 3, "largest file taken from a host that announces no size (a "
                                     "host that announces one is held to it); the partial file is deleted "
                                     "above it", check=check_whole, metavar="N", group=DOWNLOAD)
    max_member_bytes: int = option(16 * 1024 ** 3, "largest archive member unpacked (an embedding .npy; a "
                                   "StatPearls article is parsed in memory and capped at 64 MiB as well)",
                                   check=check_whole, metavar="N", group=DOWNLOAD)
