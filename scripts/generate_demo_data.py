"""Generates the demo's consumer-complaint CSV: the book's columns, deterministic for a seed.

    python scripts/generate_demo_data.py --output=data/complaints.csv [--rows=10000] [--seed=42]

A fresh machine has no network, so the demo cannot download the CFPB export; this makes data of the
same shape instead: the CFPB's product, sub-product, issue and company-response categories, U.S.
states and ZIP codes (some masked as `088XX`), a free-text narrative on about a third of the rows
(consumers consent to publish theirs only sometimes), realistic gaps, and a `consumer_disputed`
label that depends on the features and the narrative's wording, so a model has something to learn.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import pathlib
import random

COLUMNS = (
    "complaint_id",
    "date_received",
    "product",
    "sub_product",
    "issue",
    "sub_issue",
    "consumer_complaint_narrative",
    "company",
    "state",
    "zip_code",
    "company_response",
    "timely_response",
    "consumer_disputed",
)

# product: (weight, sub-products ("" = none recorded), issues, dispute log-odds)
PRODUCTS = {
    "Debt collection": (
        27,
        ["Other (phone, health club, etc.)", "", "Credit card", "Medical"],
        [
            "Cont'd attempts collect debt not owed",
            "Disclosure verification of debt",
            "Communication tactics",
            "False statements or representation",
        ],
        0.6,
    ),
    "Mortgage": (
        23,
        [
            "Conventional fixed mortgage",
            "Other mortgage",
            "FHA mortgage",
            "Conventional adjustable mortgage (ARM)",
        ],
        [
            "Loan modification,collection,foreclosure",
            "Loan servicing, payments, escrow account",
            "Application, originator, mortgage broker",
            "Settlement process and costs",
        ],
        1.0,
    ),
    "Credit reporting": (
        20,
        [""],
        [
            "Incorrect information on credit report",
            "Credit reporting company's investigation",
            "Unable to get credit report/credit score",
            "Improper use of my credit report",
        ],
        0.2,
    ),
    "Credit card": (
        10,
        [""],
        [
            "Billing disputes",
            "Other",
            "Closing/Cancelling account",
            "Identity theft / Fraud / Embezzlement",
        ],
        0.7,
    ),
    "Bank account or service": (
        9,
        [
            "Checking account",
            "Other bank product/service",
            "Savings account",
            "(CD) Certificate of deposit",
        ],
        [
            "Account opening, closing, or management",
            "Deposits and withdrawals",
            "Problems caused by my funds being low",
            "Making/receiving payments, sending money",
        ],
        -0.4,
    ),
    "Consumer loan": (
        5,
        ["Vehicle loan", "Installment loan", "Vehicle lease", "Personal line of credit"],
        [
            "Managing the loan or lease",
            "Problems when you are unable to pay",
            "Taking out the loan or lease",
            "Shopping for a loan or lease",
        ],
        -0.5,
    ),
    "Student loan": (
        3,
        ["Non-federal student loan"],
        ["Dealing with my lender or servicer", "Can't repay my loan", "Getting a loan"],
        0.6,
    ),
    "Payday loan": (
        1,
        [""],
        [
            "Charged fees or interest I didn't expect",
            "Can't contact lender",
            "Received a loan I didn't apply for",
        ],
        -1.0,
    ),
    "Money transfers": (
        1,
        ["International money transfer", "Domestic (US) money transfer"],
        ["Fraud or scam", "Money was not available when promised", "Other transaction issues"],
        -0.8,
    ),
    "Prepaid card": (
        1,
        ["General purpose card", "Gift or merchant card", "Mobile wallet"],
        [
            "Managing, opening, or closing account",
            "Unauthorized transactions/trans. issues",
            "Fraud or scam",
            "Fees",
        ],
        -0.8,
    ),
}
SUB_ISSUES = [
    "Debt is not mine",
    "Frequent or repeated calls",
    "Account status",
    "Debt was paid",
    "",
]
# response: (weight, dispute log-odds)
RESPONSES = {
    "Closed with explanation": (69, 0.8),
    "Closed with non-monetary relief": (13, -0.7),
    "In progress": (9, 0.0),
    "Closed with monetary relief": (5, -2.0),
    "Closed": (2, 0.0),
    "Untimely response": (2, 1.2),
}
COMPANIES = [
    "EQUIFAX",
    "EXPERIAN",
    "TRANSUNION",
    "BANK OF AMERICA",
    "WELLS FARGO",
    "JPMORGAN CHASE",
    "CITIBANK",
    "OCWEN",
    "NAVIENT",
    "CAPITAL ONE",
    "ENCORE CAPITAL",
    "PORTFOLIO RECOVERY",
]
# state: (weight, first ZIP digit)
STATES = {
    "CA": (14, "9"),
    "FL": (10, "3"),
    "TX": (9, "7"),
    "NY": (8, "1"),
    "GA": (5, "3"),
    "NJ": (4, "0"),
    "PA": (4, "1"),
    "IL": (4, "6"),
    "VA": (4, "2"),
    "MD": (4, "2"),
    "OH": (3, "4"),
    "NC": (3, "2"),
    "MI": (3, "4"),
    "AZ": (2, "8"),
    "WA": (2, "9"),
    "MA": (2, "0"),
    "CO": (2, "8"),
    "TN": (2, "3"),
    "MN": (1, "5"),
    "OR": (1, "9"),
    "NV": (1, "8"),
    "LA": (1, "7"),
    "MO": (1, "6"),
    "WI": (1, "5"),
}
CALM_PHRASES = [
    "I was told the matter would be reviewed.",
    "The company sent a letter explaining the charge.",
    "I would like this resolved.",
    "I called XXXX and spoke to a representative.",
    "They agreed to look into it on XX/XX/2015.",
]
ANGRY_PHRASES = [
    "They still refuse to correct it.",
    "Nobody ever called me back.",
    "This is the third time I have complained and nothing changed.",
    "The explanation they gave is false.",
    "I never received any documents.",
]
POSITIVE_PHRASES = [
    "They refunded the fee.",
    "The account was corrected.",
    "The representative was helpful.",
]


def _pick(rng: random.Random, weighted: dict[str, tuple]) -> str:
    """A key drawn with the weight that leads its tuple."""
    keys = list(weighted)
    return rng.choices(keys, weights=[weighted[key][0] for key in keys])[0]


def _narrative(rng: random.Random, product: str, issue: str, tone: float) -> str:
    sentences = [f"I have a problem with my {product.lower()}: {issue.lower()}."]
    for _ in range(rng.randint(1, 4)):
        if rng.random() < tone:
            sentences.append(rng.choice(ANGRY_PHRASES))
        elif rng.random() < 0.3:
            sentences.append(rng.choice(POSITIVE_PHRASES))
        else:
            sentences.append(rng.choice(CALM_PHRASES))
    return " ".join(sentences)


def _zip_code(rng: random.Random, first_digit: str) -> str:
    roll = rng.random()
    if roll < 0.01:
        return ""
    digits = first_digit + "".join(rng.choice("0123456789") for _ in range(4))
    return digits[:3] + "XX" if roll < 0.05 else digits


def make_row(rng: random.Random, index: int) -> dict[str, str]:
    """One complaint; the label's log-odds add product, response, timeliness and narrative tone."""
    product = _pick(rng, PRODUCTS)
    _, sub_products, issues, product_logit = PRODUCTS[product]
    response = _pick(rng, RESPONSES)
    timely = "No" if rng.random() < 0.03 else "Yes"
    state = "" if rng.random() < 0.015 else _pick(rng, STATES)
    first_digit = STATES[state][1] if state else rng.choice("0123456789")
    issue = rng.choice(issues)
    angry = rng.random()
    narrative = _narrative(rng, product, issue, angry) if rng.random() < 0.35 else ""
    logit = -2.6 + product_logit + RESPONSES[response][1] + (1.2 if timely == "No" else 0.0)
    if narrative:
        logit += 5.0 * (angry - 0.5)
    disputed = rng.random() < 1.0 / (1.0 + math.exp(-logit))
    received = datetime.date(2015, 1, 1) + datetime.timedelta(days=rng.randrange(365))
    return {
        "complaint_id": str(1_000_000 + index),
        "date_received": f"{received.month}/{received.day}/{received.year}",
        "product": product,
        "sub_product": rng.choice(sub_products),
        "issue": issue,
        "sub_issue": rng.choice(SUB_ISSUES) if product == "Debt collection" else "",
        "consumer_complaint_narrative": narrative,
        "company": rng.choice(COMPANIES),
        "state": state,
        "zip_code": _zip_code(rng, first_digit),
        "company_response": response,
        "timely_response": timely,
        # As in the CFPB export, most complaints have no dispute recorded at all.
        "consumer_disputed": "Yes" if disputed else ("No" if rng.random() < 0.3 else ""),
    }


def write_csv(path: pathlib.Path, rows: int, seed: int) -> None:
    """Writes `rows` complaints to `path` (RFC 4180, header row first)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for index in range(rows):
            writer.writerow(make_row(rng, index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=pathlib.Path, help="CSV file to write.")
    parser.add_argument("--rows", type=int, default=10_000, help="Number of complaints.")
    parser.add_argument("--seed", type=int, default=42, help="Random seed.")
    args = parser.parse_args()
    write_csv(args.output, args.rows, args.seed)
    print(f"wrote {args.rows} complaints to {args.output}")


if __name__ == "__main__":
    main()
