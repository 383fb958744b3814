"""A doctor check's result: one line of the checklist, with its status, detail and fix."""
from __future__ import annotations

from dataclasses import asdict, dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    """One line of the checklist."""

    key: str  # stable identifier: python, packages, torch, gpu, corpus, store, index, memory, encoder, search, ...
    status: str  # ok | warn | fail
    title: str
    detail: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def gb(n: float) -> str:
    """A byte count for people: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class Need:
    """Memory one piece of a retriever takes, and where: ``host`` or a device string."""

    what: str
    nbytes: int
    where: str
