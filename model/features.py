"""The demo model's features: raw keys, vocabulary and bucket sizes, and transformed names.

The book's consumer-complaints features, named once. `preprocessing_fn`, the Keras model, the eval
config and the tests import them; no other module spells a feature key. Every transformed feature
is named `transformed_name(raw key)`.

One-hot features keep the `dim + 1` most frequent values of their vocabulary plus
`VOCAB_OOV_BUCKETS` bucket for values the analyzers never saw, so each becomes a one-hot vector of
`dim + 1 + VOCAB_OOV_BUCKETS` floats. Bucket features become a one-hot vector of their bucket count.
"""

from __future__ import annotations

__all__ = [
    "BUCKET_FEATURES",
    "COMPANY_RESPONSE",
    "ISSUE",
    "LABEL_KEY",
    "LABEL_POSITIVE_VALUE",
    "NARRATIVE",
    "ONE_HOT_FEATURES",
    "PRODUCT",
    "STATE",
    "SUB_PRODUCT",
    "TEXT_FEATURES",
    "TRANSFORMED_SUFFIX",
    "VOCAB_OOV_BUCKETS",
    "ZIP_CODE",
    "transformed_name",
]

PRODUCT = "product"
SUB_PRODUCT = "sub_product"
COMPANY_RESPONSE = "company_response"
STATE = "state"
ISSUE = "issue"
ZIP_CODE = "zip_code"
NARRATIVE = "consumer_complaint_narrative"
LABEL_KEY = "consumer_disputed"
LABEL_POSITIVE_VALUE = "Yes"

# Categorical features and the number of distinct values each is expected to have.
ONE_HOT_FEATURES: dict[str, int] = {
    PRODUCT: 11,
    SUB_PRODUCT: 45,
    COMPANY_RESPONSE: 5,
    STATE: 60,
    ISSUE: 90,
}
# Numeric features cut into this many quantile buckets.
BUCKET_FEATURES: dict[str, int] = {ZIP_CODE: 10}
# Free-text features, passed through as text when the data has them.
TEXT_FEATURES: tuple[str, ...] = (NARRATIVE,)
VOCAB_OOV_BUCKETS = 1
TRANSFORMED_SUFFIX = "_xf"


def transformed_name(key: str) -> str:
    """The name of a raw feature after preprocessing: `product` -> `product_xf`."""
    return key + TRANSFORMED_SUFFIX
