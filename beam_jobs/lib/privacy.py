"""Personal data at ingest: columns the model must not see are dropped, free text is scrubbed.

Plain functions, testable without Beam. A `PrivacyPolicy` names the columns to drop and, per
column, the kinds of personal data to replace with a placeholder: e-mail addresses, U.S. phone
numbers, social security numbers and payment card numbers (Luhn-checked, so order numbers and
ZIP+4 codes stay). Replacements are counted per kind, and nothing removed is written anywhere:
rejected rows are scrubbed the same way, or withheld when their columns cannot be told apart.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import click
import pyarrow as pa

from beam_jobs.lib import cli

__all__ = [
    "KINDS",
    "PLACEHOLDERS",
    "PrivacyPolicy",
    "apply_policy",
    "parse_scrub",
    "scrub_column",
    "scrub_rejected_row",
    "scrub_text",
]

EMAIL, PHONE, SSN, CARD = "email", "phone", "ssn", "card"
# Longest patterns first: a card number must not be eaten piecewise by the phone pattern.
KINDS = (CARD, SSN, EMAIL, PHONE)
ALL_KINDS = "all"
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}
_PATTERNS = {
    CARD: re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"),
    SSN: re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)"),
    EMAIL: re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    PHONE: re.compile(
        r"(?<![\w-])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])"
    ),
}
WITHHELD = "withheld: its columns cannot be told apart to drop or scrub them"


@dataclasses.dataclass(frozen=True)
class PrivacyPolicy:
    """Columns to drop, and the kinds of personal data to scrub per column."""

    drop_columns: frozenset[str] = frozenset()
    scrub: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.drop_columns or self.scrub)


def parse_scrub(text: str | None) -> dict[str, tuple[str, ...]]:
    """Parses `narrative:email,narrative:phone,notes:all` into {column: kinds}.

    Raises:
        click.BadParameter: an item without `column:kind`, or an unknown kind.
    """
    scrub: dict[str, list[str]] = collections.defaultdict(list)
    for item in cli.split_list(text):
        column, _, kind = item.partition(":")
        if not column or kind not in (*KINDS, ALL_KINDS):
            raise click.BadParameter(
                f"{item!r}: expected <column>:<kind> with kind one of "
                f"{', '.join((*KINDS, ALL_KINDS))}",
                param_hint="--scrub",
            )
        scrub[column].extend(KINDS if kind == ALL_KINDS else [kind])
    return {column: tuple(k for k in KINDS if k in kinds) for column, kinds in scrub.items()}


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def scrub_text(text: str, kinds: tuple[str, ...]) -> tuple[str, collections.Counter]:
    """Replaces each match of the given kinds by its placeholder; counts replacements per kind."""
    counts: collections.Counter = collections.Counter()
    for kind in KINDS:
        if kind not in kinds:
            continue

        def replace(match: re.Match, kind: str = kind) -> str:
            if kind == CARD and not _luhn_valid(re.sub(r"\D", "", match.group())):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = _PATTERNS[kind].sub(replace, text)
    return text, counts


def _scrub_value(value: Any, kinds: tuple[str, ...]) -> tuple[Any, collections.Counter]:
    if isinstance(value, str):
        return scrub_text(value, kinds)
    if isinstance(value, bytes):
        text, counts = scrub_text(value.decode("utf-8", "surrogateescape"), kinds)
        return text.encode("utf-8", "surrogateescape"), counts
    if isinstance(value, (list, tuple)):
        scrubbed, counts = [], collections.Counter()
        for item in value:
            item, item_counts = _scrub_value(item, kinds)
            scrubbed.append(item)
            counts += item_counts
        return scrubbed, counts
    return value, collections.Counter()


def scrub_column(
    texts: pa.Array, kinds: tuple[str, ...]
) -> tuple[pa.Array, dict[int, collections.Counter]]:
    """An Arrow string column with personal data replaced, and {row: what was replaced}."""
    scrubbed, replaced = [], {}
    for index, text in enumerate(texts.to_pylist()):
        if text:
            text, counts = scrub_text(text, kinds)
            if counts:
                replaced[index] = counts
        scrubbed.append(text)
    return pa.array(scrubbed, pa.string()), replaced


def apply_policy(
    values: Mapping[str, Any], policy: PrivacyPolicy
) -> tuple[dict[str, Any], collections.Counter]:
    """One row's values without the dropped columns and with its text scrubbed."""
    if not policy.active:
        return dict(values), collections.Counter()
    kept: dict[str, Any] = {}
    counts: collections.Counter = collections.Counter()
    for column, value in values.items():
        if column in policy.drop_columns:
            continue
        if column in policy.scrub:
            value, column_counts = _scrub_value(value, policy.scrub[column])
            counts += column_counts
        kept[column] = value
    return kept, counts


def scrub_rejected_row(values: Mapping[str, Any] | None, raw: Any, policy: PrivacyPolicy) -> Any:
    """What `rejected/` may keep of a row under the policy.

    A row whose columns are known is dropped and scrubbed like any other; a row that could not be
    split into columns is scrubbed of every kind and, if columns are to be dropped, withheld.
    """
    if not policy.active:
        return raw
    if values is not None:
        return apply_policy(values, policy)[0]
    if policy.drop_columns or raw is None:
        return WITHHELD
    return _scrub_value(raw if isinstance(raw, (str, bytes, list)) else str(raw), KINDS)[0]
