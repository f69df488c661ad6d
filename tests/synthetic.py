"""A small data set the tests make themselves: animals, with a multi-class, a binary and a
regression label, numeric and categorical columns and some missing values.

The project has never seen it, so a test that runs it through every stage with
`tests/user_module.py` shows that the framework serves a user's own data, not only the demo's.
Rows are a deterministic function of the seed; the labels follow the features (with some noise),
so a small model learns them well above chance.
"""

from __future__ import annotations

import csv
import pathlib
import random

__all__ = ["CLASSES", "COLUMNS", "write_animals_csv"]

CLASSES = ("cat", "dog", "owl")
COLOURS = ("black", "brown", "grey", "white")
HABITATS = ("city", "farm", "forest")
COLUMNS = ("animal_id", "colour", "habitat", "size", "legs", "species", "heavy", "weight")
_MISSING_FRACTION = 0.05
_NOISE_FRACTION = 0.05


def _row(index: int, rng: random.Random) -> dict[str, object]:
    species = rng.choice(CLASSES)
    legs = 2 if species == "owl" else 4
    size = {"cat": 4.0, "dog": 20.0, "owl": 1.5}[species] * rng.uniform(0.7, 1.3)
    habitat = {"cat": "city", "dog": "farm", "owl": "forest"}[species]
    if rng.random() < 0.3:
        habitat = rng.choice(HABITATS)
    weight = round(size * 1.8 + rng.gauss(0, 0.5), 3)
    if rng.random() < _NOISE_FRACTION:
        species = rng.choice(CLASSES)
    row: dict[str, object] = {
        "animal_id": 1000 + index,
        "colour": rng.choice(COLOURS),
        "habitat": habitat,
        "size": round(size, 3),
        "legs": legs,
        "species": species,
        "heavy": int(weight > 12),
        "weight": weight,
    }
    for column in ("colour", "size"):  # Optional features: missing now and then.
        if rng.random() < _MISSING_FRACTION:
            row[column] = ""
    return row


def write_animals_csv(path: pathlib.Path, rows: int = 600, seed: int = 7) -> pathlib.Path:
    """Writes `rows` animals to the CSV file `path` (a header row first) and returns the path."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for index in range(rows):
            writer.writerow(_row(index, rng))
    return path
