"""Synthetic KARE-format data: samples and a similar-patient file, with a planted, learnable signal.

Nothing here comes from MIMIC. Vocabulary is real category names (CCS diagnosis and procedure
categories, ATC level-3 drug classes), lower case, as KARE writes them.

Planted signal: the last visit of a patient who dies (label 1) contains septicemia, respiratory
failure, shock, mechanical ventilation and vasopressors (adrenergic and dopaminergic agents) far more
often than other visits (see ``RISK_CONDITIONS`` etc. for the probabilities).

Patients have 1-4 samples (one per visit, each holding the history up to that visit, as PyHealth
builds them); only a patient's last sample can have label 1. Exactly ``round(n * positive_rate)``
samples have label 1.

The similar-patient file follows KARE: for each sample ``<patient_id>_<k>`` the most similar sample of
another patient with the same label ("positive") and with the other label ("negative"), by Jaccard
similarity of the latest visit's codes, each rendered as a KARE context ending ``\\n\\nLabel:\\n<y>\\n\\n``.
A share of entries lack one side (``["None"]``) or both (``["None"]`` for the whole entry).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from medret.errors import ConfigError
from medret.recipes.kare.records import Sample, parse_samples
from medret.recipes.kare.render import render_patient_context
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

SAMPLES_NAME = "samples.json"
SIMILAR_NAME = "similar.json"

CONDITIONS: tuple[str, ...] = (
    "essential hypertension",
    "disorders of lipid metabolism",
    "coronary atherosclerosis and other heart disease",
    "cardiac dysrhythmias",
    "congestive heart failure; nonhypertensive",
    "diabetes mellitus without complication",
    "diabetes mellitus with complications",
    "fluid and electrolyte disorders",
    "deficiency and other anemia",
    "chronic kidney disease",
    "acute renal failure",
    "chronic obstructive pulmonary disease and bronchiectasis",
    "pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "urinary tract infections",
    "esophageal disorders",
    "thyroid disorders",
    "mood disorders",
    "anxiety disorders",
    "alcohol-related disorders",
    "substance-related disorders",
    "osteoarthritis",
    "other nervous system disorders",
    "acute cerebrovascular disease",
    "acute myocardial infarction",
    "pulmonary heart disease",
    "pleurisy; pneumothorax; pulmonary collapse",
    "gastrointestinal hemorrhage",
    "other liver diseases",
    "complications of surgical procedures or medical care",
    "other aftercare",
    "residual codes; unclassified",
    "e codes: adverse effects of medical drugs",
    "coagulation and hemorrhagic disorders",
    "delirium dementia and amnestic and other cognitive disorders",
    "secondary malignancies",
    "hypertension with complications and secondary hypertension",
    "heart valve disorders",
    "asthma",
    "nutritional deficiencies",
    "other lower respiratory disease",
)
PROCEDURES: tuple[str, ...] = (
    "other vascular catheterization; not heart",
    "blood transfusion",
    "diagnostic cardiac catheterization; coronary arteriography",
    "upper gastrointestinal endoscopy; biopsy",
    "hemodialysis",
    "enteral and parenteral nutrition",
    "other therapeutic procedures",
    "incision and drainage; skin and subcutaneous tissue",
    "percutaneous transluminal coronary angioplasty (ptca)",
    "coronary artery bypass graft (cabg)",
    "computerized axial tomography (ct) scan head",
    "diagnostic bronchoscopy and biopsy of bronchus",
    "insertion; replacement; or removal of extracranial ventricular shunt",
    "colonoscopy and biopsy",
    "arterial blood gases",
    "conversion of cardiac rhythm",
    "other or procedures on vessels other than head and neck",
    "tracheostomy; temporary and permanent",
)
DRUGS: tuple[str, ...] = (
    "antithrombotic agents",
    "beta blocking agents",
    "drugs for peptic ulcer and gastro-oesophageal reflux disease (gord)",
    "high-ceiling diuretics",
    "insulins and analogues",
    "opioids",
    "other analgesics and antipyretics",
    "lipid modifying agents, plain",
    "ace inhibitors, plain",
    "corticosteroids for systemic use, plain",
    "potassium supplements",
    "i.v. solution additives",
    "drugs for constipation",
    "hypnotics and sedatives",
    "other beta-lactam antibacterials",
    "beta-lactam antibacterials, penicillins",
    "other antibacterials",
    "antiemetics and antinauseants",
    "anxiolytics",
    "selective calcium channel blockers with mainly vascular effects",
    "antiepileptics",
    "thyroid preparations",
    "other mineral supplements",
    "vitamin b12 and folic acid",
    "anesthetics, general",
    "blood substitutes and perfusion solutions",
)
# (name, probability in a dying patient's last visit, probability elsewhere)
RISK_CONDITIONS: tuple[tuple[str, float, float], ...] = (
    ("septicemia (except in labor)", 0.65, 0.06),
    ("respiratory failure; insufficiency; arrest (adult)", 0.6, 0.06),
    ("shock", 0.4, 0.03),
)
RISK_PROCEDURES: tuple[tuple[str, float, float], ...] = (
    ("respiratory intubation and mechanical ventilation", 0.65, 0.07),
)
RISK_DRUGS: tuple[tuple[str, float, float], ...] = (
    ("adrenergic and dopaminergic agents", 0.55, 0.06),
)


def _visit(rng: random.Random, dying: bool, carry: dict[str, list[str]]) -> dict[str, list[str]]:
    def pick(pool: tuple[str, ...], k_lo: int, k_hi: int, field: str) -> list[str]:
        k = rng.randint(k_lo, k_hi)
        items = rng.sample(pool, min(k, len(pool)))
        # Chronic items tend to continue from earlier visits.
        items += [x for x in carry.get(field, []) if rng.random() < 0.5 and x not in items]
        return items

    visit = {
        "conditions": pick(CONDITIONS, 2, 8, "conditions"),
        "procedures": pick(PROCEDURES, 0, 3, "procedures"),
        "drugs": pick(DRUGS, 1, 9, "drugs"),
    }
    for field, table in (("conditions", RISK_CONDITIONS), ("procedures", RISK_PROCEDURES), ("drugs", RISK_DRUGS)):
        for name, p_die, p_other in table:
            if rng.random() < (p_die if dying else p_other) and name not in visit[field]:
                visit[field].insert(rng.randrange(len(visit[field]) + 1), name)
    for field in visit:
        carry[field] = list(visit[field])
    return visit


def synth_samples(n: int, positive_rate: float, seed: int) -> list[dict[str, Any]]:
    """``n`` KARE-format sample dicts; exactly ``round(n * positive_rate)`` have label 1."""
    if n < 1:
        raise ConfigError(f"n={n!r} is invalid: give at least 1 sample")
    if not 0.0 <= positive_rate <= 1.0:
        raise ConfigError(f"positive_rate={positive_rate!r} is invalid: give a rate between 0 and 1")
    rng = random.Random(f"medret-kare-synth:{seed}")
    n_pos = int(round(n * positive_rate))
    n_neg = n - n_pos
    # Patients: n_pos who die (one label-1 last sample each, plus earlier label-0 samples), then survivors.
    plans: list[tuple[bool, int]] = []
    neg_left = n_neg
    for _ in range(n_pos):
        earlier = min(rng.randint(0, 3), neg_left)
        neg_left -= earlier
        plans.append((True, earlier + 1))
    while neg_left > 0:
        size = min(rng.randint(1, 4), neg_left)
        neg_left -= size
        plans.append((False, size))
    rng.shuffle(plans)
    ids = rng.sample(range(10_000_000, 20_000_000), len(plans))
    hadm = iter(rng.sample(range(20_000_000, 30_000_000), n))
    out: list[dict[str, Any]] = []
    for (dies, size), pid in zip(plans, ids):
        carry: dict[str, list[str]] = {}
        visits = [_visit(rng, dies and v == size - 1, carry) for v in range(size)]
        for k in range(size):
            hist = visits[: k + 1]
            out.append(
                {
                    "visit_id": str(next(hadm)),
                    "patient_id": str(pid),
                    "conditions": [v["conditions"] for v in hist],
                    "procedures": [v["procedures"] for v in hist],
                    "drugs": [v["drugs"] for v in hist],
                    "label": int(dies and k == size - 1),
                }
            )
    return out


def synth_similar(
    samples: list[Sample],
    seed: int,
    one_neighbour_rate: float = 0.05,
    none_rate: float = 0.02,
    lone_role: str = "random",
) -> dict[str, Any]:
    """KARE-style similar-patient mapping for ``samples`` (top-1 per role, other patients only).

    In a one-neighbour entry the remaining neighbour has role ``lone_role``: "positive" (the worst case
    for leaks: its label is the target's), "negative", or "random".
    """
    if lone_role not in ("random", "positive", "negative"):
        raise ConfigError(f"lone_role={lone_role!r} is invalid: use 'random', 'positive' or 'negative'")
    for name, rate in (("one_neighbour_rate", one_neighbour_rate), ("none_rate", none_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{name}={rate!r} is invalid: give a rate between 0 and 1")
    rng = random.Random(f"medret-kare-synth-similar:{seed}")
    vocab: dict[str, int] = {}
    rows: list[list[int]] = []
    for s in samples:
        last = ([f"c:{x}" for x in s.conditions[-1]] + [f"p:{x}" for x in s.procedures[-1]]
                + [f"d:{x}" for x in s.drugs[-1]])
        rows.append([vocab.setdefault(x, len(vocab)) for x in sorted(set(last))])
    m = np.zeros((len(samples), max(1, len(vocab))), dtype=np.float32)
    for i, cols in enumerate(rows):
        m[i, cols] = 1.0
    sizes = m.sum(axis=1)
    patients = np.array([s.patient_id for s in samples])
    labels = np.array([s.label for s in samples])
    contexts = [render_patient_context(s) for s in samples]
    entries: list[dict[str, list[str]]] = []
    block = 256
    for start in range(0, len(samples), block):
        inter = m[start : start + block] @ m.T
        jac = inter / np.maximum(sizes[start : start + block, None] + sizes[None, :] - inter, 1.0)
        for r in range(inter.shape[0]):
            i = start + r
            other = patients != samples[i].patient_id
            entry: dict[str, list[str]] = {}
            same = labels == samples[i].label
            for role, mask in (("positive", other & same), ("negative", other & ~same)):
                if not mask.any():
                    entry[role] = ["None"]
                    continue
                j = int(np.argmax(np.where(mask, jac[r], -1.0)))
                entry[role] = [contexts[j] + f"\n\nLabel:\n{samples[j].label}\n\n"]
            entries.append(entry)
    out: dict[str, Any] = {}
    for s, entry in zip(samples, entries):
        u = rng.random()
        if u < none_rate:
            out[s.sample_id] = ["None"]
            continue
        if u < none_rate + one_neighbour_rate:
            keep = rng.choice(("positive", "negative")) if lone_role == "random" else lone_role
            entry["negative" if keep == "positive" else "positive"] = ["None"]
        out[s.sample_id] = entry
    return out


def synth(
    out_dir: str | Path,
    n: int = 500,
    positive_rate: float = 0.05,
    seed: int = 0,
    one_neighbour_rate: float = 0.05,
    none_rate: float = 0.02,
) -> dict[str, Any]:
    """Write ``samples.json`` and ``similar.json`` into ``out_dir``; returns a summary."""
    records = synth_samples(n, positive_rate, seed)
    samples = parse_samples(records, "synthetic samples")
    similar = synth_similar(samples, seed, one_neighbour_rate, none_rate)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is invalid: it is a file; pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SAMPLES_NAME, json.dumps(records, indent=1) + "\n")
    atomic_write_text(out / SIMILAR_NAME, json.dumps(similar, indent=1) + "\n")
    one = sum(1 for v in similar.values() if isinstance(v, dict) and ["None"] in (v["positive"], v["negative"]))
    none = sum(1 for v in similar.values() if not isinstance(v, dict))
    summary = {
        "samples": len(records),
        "patients": len({r["patient_id"] for r in records}),
        "label_1": sum(r["label"] for r in records),
        "similar_entries": len(similar),
        "one_neighbour_entries": one,
        "none_entries": none,
        "samples_path": str(out / SAMPLES_NAME),
        "similar_path": str(out / SIMILAR_NAME),
    }
    logger.info("synthetic KARE data: %s", summary)
    return summary
