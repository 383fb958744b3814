"""Load and validate KARE-format patient samples and similar-patient files.

Samples (one JSON list per split, as KARE writes them after PyHealth processing)::

    [{"visit_id": "...", "patient_id": "...",
      "conditions": [[...visit 0...], [...visit 1...]],   # CCS category names, lower case
      "procedures": [[...], [...]],                         # CCS procedure names
      "drugs": [[...], [...]],                              # ATC level-3 names
      "label": 0 | 1}, ...]

A sample's id is ``<patient_id>_<k>`` where ``k`` counts that patient's samples in file order
(0, 1, ...), which is how KARE keys its similar-patient file::

    {"<patient_id>_<k>": {"positive": ["<context>\\n\\nLabel:\\n1\\n\\n"], "negative": [...]}}

``"positive"`` holds the neighbour(s) with the *same* label as the sample, ``"negative"`` the other
label; ``["None"]`` (or ``"None"``, or an empty list) means no neighbour was found.

Every problem is collected and raised together as one :class:`KareInputError` that names the file,
the record (position, patient_id, visit_id), the field, the value and the fix.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from medret.errors import MedretError

logger = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("visit_id", "patient_id", "conditions", "procedures", "drugs", "label")
VISIT_FIELDS: tuple[str, ...] = ("conditions", "procedures", "drugs")
MAX_ERRORS_SHOWN = 20

_LABEL_TAIL = re.compile(r"\s*Label:\s*([01])\s*\Z")
_NONE_VALUES = ("None", "none", "")


class KareInputError(MedretError, ValueError):
    """A KARE samples or similar-patient file is malformed."""


@dataclass(frozen=True)
class Sample:
    """One prediction sample: a patient's visits up to now and the mortality label."""

    sample_id: str
    patient_id: str
    visit_id: str
    conditions: tuple[tuple[str, ...], ...]
    procedures: tuple[tuple[str, ...], ...]
    drugs: tuple[tuple[str, ...], ...]
    label: int
    index: int
    source: str

    @property
    def n_visits(self) -> int:
        return len(self.conditions)


@dataclass(frozen=True)
class Neighbour:
    """A similar patient: its rendered clinical context (label line removed) and its own label."""

    text: str
    label: int


@dataclass(frozen=True)
class SimilarEntry:
    """The neighbours KARE retrieved for one sample."""

    positive: tuple[Neighbour, ...]
    negative: tuple[Neighbour, ...]


def _describe(i: int, rec: Any) -> str:
    if isinstance(rec, dict):
        return f"record #{i} (patient_id={rec.get('patient_id')!r}, visit_id={rec.get('visit_id')!r})"
    return f"record #{i}"


def _raise_collected(source: str, what: str, errors: list[str]) -> None:
    if not errors:
        return
    shown = errors[:MAX_ERRORS_SHOWN]
    more = len(errors) - len(shown)
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise KareInputError(f"{source}: {len(errors)} invalid {what}:\n  " + "\n  ".join(shown) + tail)


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Read a JSON file; a missing or unparsable file raises KareInputError naming it."""
    p = Path(path)
    if not p.is_file():
        raise KareInputError(f"{what} file {str(p)!r} does not exist: pass the path of an existing JSON file")
    try:
        with open(p, "rb") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KareInputError(f"{what} file {str(p)!r} is not valid JSON ({e}): fix or regenerate the file") from e


def _visit_lists(rec: dict[str, Any], field: str, where: str, errors: list[str]) -> tuple[tuple[str, ...], ...] | None:
    value = rec[field]
    if not isinstance(value, list):
        errors.append(f"{where}: field {field!r} = {_short(value)} must be a list of visits (a list of lists of "
                      "strings)")
        return None
    visits: list[tuple[str, ...]] = []
    for j, visit in enumerate(value):
        if not isinstance(visit, list) or not all(isinstance(x, str) for x in visit):
            errors.append(
                f"{where}: field {field!r} visit {j} = {_short(visit)} must be a list of strings "
                f"(one name per code, e.g. [\"septicemia (except in labor)\"])"
            )
            return None
        visits.append(tuple(x.strip() for x in visit if x.strip()))
    return tuple(visits)


def _short(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 80 else s[:80] + "…"


def _id_value(rec: dict[str, Any], field: str, where: str, errors: list[str]) -> str | None:
    value = rec[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        errors.append(f"{where}: field {field!r} = {_short(value)} must be a non-empty string (or integer) id")
        return None
    return str(value).strip()


def parse_samples(records: Any, source: str) -> list[Sample]:
    """Validate a decoded samples list; raise one KareInputError listing every bad record."""
    if not isinstance(records, list):
        raise KareInputError(
            f"{source}: top level is {type(records).__name__}, expected a JSON list of sample objects "
            f"(KARE's per-split sample file)"
        )
    errors: list[str] = []
    samples: list[Sample] = []
    per_patient: dict[str, int] = {}
    seen_visits: dict[tuple[str, str], int] = {}
    for i, rec in enumerate(records):
        where = _describe(i, rec)
        if not isinstance(rec, dict):
            errors.append(f"{where}: is {type(rec).__name__}, expected an object with fields {list(REQUIRED_FIELDS)}")
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            errors.append(f"{where}: missing field(s) {missing}; every sample needs {list(REQUIRED_FIELDS)}")
            continue
        n_err = len(errors)
        pid = _id_value(rec, "patient_id", where, errors)
        vid = _id_value(rec, "visit_id", where, errors)
        label = rec["label"]
        if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, (int, float)):
            errors.append(f"{where}: field 'label' = {_short(label)} is not 0 or 1 (mortality label must be the "
                          "integer 0 or 1)")
        lists = {f: _visit_lists(rec, f, where, errors) for f in VISIT_FIELDS}
        if len(errors) > n_err or pid is None or vid is None:
            continue
        lengths = {f: len(v) for f, v in lists.items() if v is not None}
        if len(set(lengths.values())) > 1:
            errors.append(
                f"{where}: ragged visit lists {lengths}: conditions, procedures and drugs must have one entry per "
                f"visit (use [] for a visit with no codes)"
            )
            continue
        if next(iter(lengths.values())) == 0:
            errors.append(f"{where}: has no visits (conditions/procedures/drugs are empty lists); drop the record")
            continue
        key = (pid, vid)
        if key in seen_visits:
            errors.append(f"{where}: duplicate id: patient_id={pid!r} visit_id={vid!r} also at record "
                          f"#{seen_visits[key]}")
            continue
        seen_visits[key] = i
        k = per_patient.get(pid, 0)
        per_patient[pid] = k + 1
        samples.append(
            Sample(
                sample_id=f"{pid}_{k}",
                patient_id=pid,
                visit_id=vid,
                conditions=lists["conditions"],  # type: ignore[arg-type]
                procedures=lists["procedures"],  # type: ignore[arg-type]
                drugs=lists["drugs"],  # type: ignore[arg-type]
                label=int(label),
                index=i,
                source=source,
            )
        )
    _raise_collected(source, "sample record(s)", errors)
    logger.info("%s: %d samples from %d patients", source, len(samples), len(per_patient))
    return samples


def load_samples(path: str | os.PathLike[str]) -> list[Sample]:
    """Read and validate one KARE samples file."""
    return parse_samples(read_json(path, "samples"), str(path))


def split_label(context: str) -> tuple[str, int] | None:
    """Split KARE's ``<context>\\n\\nLabel:\\n<0|1>`` into (context, label); None without a label line."""
    m = _LABEL_TAIL.search(context)
    if m is None:
        return None
    return context[: m.start()].rstrip(), int(m.group(1))


def _is_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in _NONE_VALUES
    if isinstance(value, list):
        return all(isinstance(v, str) and v.strip() in _NONE_VALUES for v in value)
    return False


def _neighbours(value: Any, where: str, role: str, errors: list[str]) -> tuple[Neighbour, ...]:
    if _is_none(value):
        return ()
    if not isinstance(value, list):
        errors.append(f"{where}: {role!r} = {_short(value)} must be a list of context strings or [\"None\"]")
        return ()
    out: list[Neighbour] = []
    for j, ctx in enumerate(value):
        if isinstance(ctx, str) and ctx.strip() in _NONE_VALUES:
            continue
        if not isinstance(ctx, str):
            errors.append(f"{where}: {role}[{j}] = {_short(ctx)} must be a context string")
            continue
        parsed = split_label(ctx)
        if parsed is None:
            errors.append(
                f"{where}: {role}[{j}] does not end with KARE's label line 'Label:\\n0' or 'Label:\\n1' "
                f"(ends with {_short(ctx[-40:])}); regenerate the similar-patient file"
            )
            continue
        out.append(Neighbour(text=parsed[0], label=parsed[1]))
    return tuple(out)


def parse_similar(obj: Any, source: str) -> dict[str, SimilarEntry]:
    """Validate a decoded similar-patient mapping."""
    if not isinstance(obj, dict):
        raise KareInputError(
            f"{source}: top level is {type(obj).__name__}, expected an object "
            f"{{\"<patient_id>_<k>\": {{\"positive\": [...], \"negative\": [...]}}}}"
        )
    errors: list[str] = []
    out: dict[str, SimilarEntry] = {}
    for key, value in obj.items():
        where = f"similar entry {key!r}"
        if _is_none(value):
            out[key] = SimilarEntry((), ())
            continue
        if not isinstance(value, dict):
            errors.append(f"{where}: is {_short(value)}, expected "
                          '{"positive": [...], "negative": [...]} or ["None"]')
            continue
        unknown = sorted(set(value) - {"positive", "negative"})
        if unknown:
            errors.append(f"{where}: unknown key(s) {unknown}; only 'positive' and 'negative' are allowed")
            continue
        pos = _neighbours(value.get("positive"), where, "positive", errors)
        neg = _neighbours(value.get("negative"), where, "negative", errors)
        out[key] = SimilarEntry(pos, neg)
    _raise_collected(source, "similar-patient entr(y/ies)", errors)
    return out


def load_similar(path: str | os.PathLike[str]) -> dict[str, SimilarEntry]:
    """Read and validate a KARE similar-patient file."""
    return parse_similar(read_json(path, "similar-patient"), str(path))


def check_similar_consistency(samples: Iterable[Sample], similar: dict[str, SimilarEntry], source: str) -> None:
    """KARE's 'positive' neighbours share the sample's label and 'negative' ones do not; anything else
    means the similar file belongs to other samples (or another task)."""
    errors: list[str] = []
    for s in samples:
        entry = similar.get(s.sample_id)
        if entry is None:
            continue
        for role, group, want_same in (("positive", entry.positive, True), ("negative", entry.negative, False)):
            for j, nb in enumerate(group):
                if (nb.label == s.label) != want_same:
                    errors.append(
                        f"similar entry {s.sample_id!r}: {role}[{j}] has label {nb.label} but the sample "
                        f"(patient_id={s.patient_id!r}, visit_id={s.visit_id!r}) has label {s.label}; "
                        f"'positive' must share the sample's label and 'negative' must not — is this the "
                        f"similar-patient file of these samples?"
                    )
    _raise_collected(source, "similar-patient entr(y/ies)", errors)
