"""Which patient each image shows, so that no patient is in both a training and a test fold.

Two ways in, in this order:

- a ``patients.csv`` beside the class folders, with columns ``file`` and ``patient`` (``file`` as the
  dataset lists it, ``Normal/IM-0115-0001.png``, or its bare name where that is unique): the user's own
  word, checked row by row (:func:`read_patients_csv`);
- else the file-name patterns of the public sets (:data:`RULES`): Kermany et al.'s ``personN_...``,
  ``IM-NNNN-...`` and ``NORMAL2-IM-NNNN-...`` (a second series whose numbers may be another patient's,
  so a namespace of its own), and NIH ChestX-ray14's ``NNNNNNNN_MMM``.

An image that neither names is a patient of its own. Patient ids are namespaced by the rule that found
them (``kermany-person-1609``), so one child is one patient in any dataset folder that holds it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from engine.data.file_tables import FileTableError, read_file_table

SPLITS = ("patient", "image")
"""Fold levels: every image of a patient in one fold, or images dealt one by one (the paper's)."""
PATIENTS_FILE = "patients.csv"
OWN = "own image"
CSV_RULE = "patients.csv"


@dataclass(frozen=True)
class Rule:
    """A file-name pattern whose first group is the patient, and the namespace it is read in."""

    name: str
    pattern: re.Pattern[str]
    namespace: str

    def patient(self, basename: str) -> str | None:
        found = self.pattern.match(basename)
        return f"{self.namespace}-{found.group(1)}" if found else None


RULES: tuple[Rule, ...] = (
    Rule("Kermany personN", re.compile(r"person(\d+)_", re.IGNORECASE), "kermany-person"),
    Rule("Kermany NORMAL2-IM-NNNN", re.compile(r"NORMAL2-IM-(\d+)-", re.IGNORECASE), "kermany-normal2"),
    Rule("Kermany IM-NNNN", re.compile(r"IM-(\d+)-", re.IGNORECASE), "kermany-im"),
    Rule("NIH ChestX-ray14 NNNNNNNN_MMM", re.compile(r"(\d{8})_\d{3}\.", re.IGNORECASE), "nih"),
)


class PatientsError(FileTableError):
    """A ``patients.csv`` that cannot be used: the message names the row."""


@dataclass(frozen=True)
class PatientGroups:
    """Per image, its patient id and the rule that found it, in the dataset's file order."""

    patients: tuple[str, ...]
    rules: tuple[str, ...]
    summary: dict = field(default_factory=dict)

    @property
    def repeats(self) -> bool:
        """True when some patient has more than one image: only then do patient folds differ from image folds."""
        return self.summary.get("images_sharing_a_patient", 0) > 0


def summarize(patients: list[str] | tuple[str, ...], rules: list[str] | tuple[str, ...]) -> dict:
    """Counts a reader needs: patients, images that share one, and how many images each rule named."""
    sizes = Counter(patients)
    return {
        "n_images": len(patients),
        "n_patients": len(sizes),
        "images_sharing_a_patient": sum(n for n in sizes.values() if n > 1),
        "patients_with_several_images": sum(1 for n in sizes.values() if n > 1),
        "largest_patient": max(sizes.values(), default=0),
        "by_rule": dict(sorted(Counter(rules).items())),
    }


def read_patients_csv(data: bytes, files: list[str]) -> dict[str, str]:
    """``{file: patient}`` from a ``patients.csv``, each ``file`` matched to one of ``files``; a bad row is named
    (``engine.data.file_tables.read_file_table``), an empty patient too."""
    rows = read_file_table(data, files, name=PATIENTS_FILE, required=("patient",), error=PatientsError)
    return {file: row["patient"] for file, row in rows.items()}


def patient_groups(files: list[str], listed: dict[str, str] | None = None) -> PatientGroups:
    """Each file's patient: from ``listed`` (a ``patients.csv``), else a file-name rule, else its own."""
    patients: list[str] = []
    rules: list[str] = []
    for name in files:
        if listed and name in listed:
            patients.append(f"csv-{listed[name]}")
            rules.append(CSV_RULE)
            continue
        basename = PurePosixPath(name).name
        for rule in RULES:
            patient = rule.patient(basename)
            if patient is not None:
                patients.append(patient)
                rules.append(rule.name)
                break
        else:
            patients.append(f"image-{name}")
            rules.append(OWN)
    return PatientGroups(tuple(patients), tuple(rules), summarize(patients, rules))
