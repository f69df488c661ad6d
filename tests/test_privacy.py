"""Tests of PII handling: scrubbing patterns, dropped columns, rejected rows."""

from __future__ import annotations

import pytest

from beam_jobs.lib import privacy


@pytest.mark.parametrize(
    ("text", "kinds", "expected", "counts"),
    [
        (
            "mail me at jane.doe+cfpb@example.co.uk now",
            ("email",),
            "mail me at [EMAIL] now",
            {"email": 1},
        ),
        (
            "call (555) 123-4567 or 555.123.4567 or +1 555-123-4567",
            ("phone",),
            "call [PHONE] or [PHONE] or [PHONE]",
            {"phone": 3},
        ),
        ("my SSN is 123-45-6789.", ("ssn",), "my SSN is [SSN].", {"ssn": 1}),
        ("card 4111 1111 1111 1111 was charged", ("card",), "card [CARD] was charged", {"card": 1}),
        # Not Luhn-valid: an account or order number, kept.
        ("order 1234 5678 9012 3456 shipped", ("card",), "order 1234 5678 9012 3456 shipped", {}),
        # ZIP codes, dates, amounts and CFPB's XXXX redactions are not personal data here.
        (
            "ZIP 76119-1234 on 03/19/2015 for $1,200.00 to XXXX",
            privacy.KINDS,
            "ZIP 76119-1234 on 03/19/2015 for $1,200.00 to XXXX",
            {},
        ),
        (
            "ssn 123-45-6789 phone 555-123-4567",
            ("phone",),
            "ssn 123-45-6789 phone [PHONE]",
            {"phone": 1},
        ),
    ],
)
def test_scrub_text(text, kinds, expected, counts):
    scrubbed, found = privacy.scrub_text(text, kinds)
    assert scrubbed == expected
    assert dict(found) == counts


def test_parse_scrub_expands_all_and_rejects_unknown_kinds():
    assert privacy.parse_scrub("narrative:email,narrative:phone,notes:all") == {
        "narrative": ("email", "phone"),
        "notes": privacy.KINDS,
    }
    with pytest.raises(Exception, match="expected <column>:<kind>"):
        privacy.parse_scrub("narrative:passport")
    with pytest.raises(Exception, match="expected <column>:<kind>"):
        privacy.parse_scrub("narrative")


def test_apply_policy_drops_and_scrubs_str_and_bytes():
    policy = privacy.PrivacyPolicy(
        drop_columns=frozenset({"name"}), scrub={"text": ("email",), "notes": ("phone",)}
    )
    values, counts = privacy.apply_policy(
        {"name": "Jane", "text": "a@b.com and c@d.org", "notes": [b"555-123-4567"], "id": 3},
        policy,
    )
    assert values == {"text": "[EMAIL] and [EMAIL]", "notes": [b"[PHONE]"], "id": 3}
    assert dict(counts) == {"email": 2, "phone": 1}


def test_rejected_rows_keep_nothing_removed():
    policy = privacy.PrivacyPolicy(drop_columns=frozenset({"name"}), scrub={"text": ("email",)})
    assert privacy.scrub_rejected_row(
        {"name": "Jane", "text": "x@y.com"}, ["Jane", "x@y.com"], policy
    ) == {"text": "[EMAIL]"}
    assert privacy.scrub_rejected_row(None, ["Jane", "x@y.com", "extra"], policy) == (
        privacy.WITHHELD
    )
    scrub_only = privacy.PrivacyPolicy(scrub={"text": ("email",)})
    assert privacy.scrub_rejected_row(None, ["x@y.com", "555-123-4567"], scrub_only) == [
        "[EMAIL]",
        "[PHONE]",
    ]
    assert privacy.scrub_rejected_row(None, ["x@y.com"], privacy.PrivacyPolicy()) == ["x@y.com"]
