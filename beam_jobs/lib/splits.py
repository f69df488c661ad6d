"""Splits: named hash buckets, so every runner puts a record in the same split.

A record's split is a bucket of a stable fingerprint of its key (the serialized example, or a
partition feature's value), weighted by the split weights of `--splits=train:2,eval:1`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import click

from beam_jobs.lib import cli, layout

__all__ = [
    "DEFAULT_SPLITS",
    "SPLIT_NAME",
    "Split",
    "assign_split",
    "fingerprint",
    "parse_splits",
    "split_of_fingerprint",
]

DEFAULT_SPLITS = "train:2,eval:1"
SPLIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Split:
    """A named split and its weight among the hash buckets."""

    name: str
    weight: int


def parse_splits(text: str) -> tuple[Split, ...]:
    """Parses `train:2,eval:1` into splits with positive integer weights.

    Raises:
        click.BadParameter: a malformed, repeated or reserved split name, or a bad weight.
    """
    splits = []
    for item in cli.split_list(text):
        name, _, weight = item.partition(":")
        if not SPLIT_NAME.fullmatch(name) or name == layout.REJECTED_DIR:
            raise click.BadParameter(f"{name!r} is not a usable split name", param_hint="--splits")
        if not weight.isdigit() or int(weight) <= 0:
            raise click.BadParameter(
                f"split {name!r} needs a positive integer weight, as in {DEFAULT_SPLITS}",
                param_hint="--splits",
            )
        splits.append(Split(name, int(weight)))
    names = [split.name for split in splits]
    if not splits or len(set(names)) != len(names):
        raise click.BadParameter(f"need distinct split names, got {text!r}", param_hint="--splits")
    return tuple(splits)


def fingerprint(key: bytes) -> int:
    """A stable 64-bit fingerprint: the same on every machine, runner and Python process."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def assign_split(key: bytes, splits: tuple[Split, ...]) -> str:
    """The split of a record: a fingerprint of its key, bucketed by the split weights."""
    return split_of_fingerprint(fingerprint(key), splits)


def split_of_fingerprint(key_fingerprint: int, splits: tuple[Split, ...]) -> str:
    """The split a fingerprint's bucket falls in, by the split weights."""
    bucket = key_fingerprint % sum(split.weight for split in splits)
    for split in splits:
        if bucket < split.weight:
            return split.name
        bucket -= split.weight
    raise AssertionError("unreachable: buckets cover every fingerprint")
