"""The artifact layout: every file, folder, signature and count name the stages share, once.

A stage writes these names and a later stage reads them; both take them from here, so a name is
spelled in one place. Names used by one stage alone stay in that stage's module.
"""

from __future__ import annotations

__all__ = [
    "BLESSED_FILE",
    "BLESSING_JSON",
    "COUNTS_FILE",
    "EXAMPLES_EVALUATED",
    "EXAMPLES_FILE",
    "EXAMPLES_INPUT",
    "EXAMPLES_PATTERN",
    "EXAMPLE_COUNT_METRIC",
    "JSONL_SUFFIX",
    "MANIFEST_FILE",
    "NOT_BLESSED_FILE",
    "OUTPUT_KEY",
    "PREDICTIONS_DIR",
    "PREDICTION_LOGS_DIR",
    "PROVENANCE_FILE",
    "REJECTED_DIR",
    "REJECTED_FILE",
    "ROWS_READ",
    "ROWS_REJECTED",
    "ROWS_WRITTEN",
    "SAVED_MODEL_FILE",
    "SERVING_MODEL_DIR",
    "SERVING_SIGNATURE",
    "STATS_FILE",
    "TFMA_DIR",
    "TFRECORD_GZ_SUFFIX",
    "TRANSFORMED_EXAMPLES_DIR",
    "TRANSFORM_SIGNATURE",
    "shard_pattern",
]

# Every stage's commit marker, written last.
MANIFEST_FILE = "manifest.json"
# Counts a pipeline writes into its staging folder for `run` to read back; never published.
COUNTS_FILE = ".counts.json"

# Shard files are `<prefix>-<i>-of-<n><suffix>`; a (prefix, suffix) pair names a kind of shard.
TFRECORD_GZ_SUFFIX = ".tfrecord.gz"
JSONL_SUFFIX = ".jsonl"
EXAMPLES_FILE = ("data", TFRECORD_GZ_SUFFIX)
REJECTED_DIR = "rejected"
REJECTED_FILE = (REJECTED_DIR, JSONL_SUFFIX)

# Folders of one stage's output that another stage reads.
TRANSFORMED_EXAMPLES_DIR = "transformed_examples"
SERVING_MODEL_DIR = "serving_model"
STATS_FILE = "stats.pb"
TFMA_DIR = "tfma"
PREDICTIONS_DIR = "predictions"
PREDICTION_LOGS_DIR = "prediction_logs"
BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
BLESSING_JSON = "blessing.json"
PROVENANCE_FILE = "provenance.json"

# The model contract: a SavedModel whose serving signature takes serialized raw examples.
SAVED_MODEL_FILE = "saved_model.pb"
SERVING_SIGNATURE = "serving_default"
TRANSFORM_SIGNATURE = "transform_features"
EXAMPLES_INPUT = "examples"
OUTPUT_KEY = "outputs"

# Count names in manifests.
ROWS_READ = "rows_read"
ROWS_REJECTED = "rows_rejected"
ROWS_WRITTEN = "rows_written"
EXAMPLES_EVALUATED = "examples_evaluated"
# TFMA's metric of examples per slice.
EXAMPLE_COUNT_METRIC = "example_count"


def shard_pattern(file_name: tuple[str, str]) -> str:
    """The glob of every shard of a (prefix, suffix) kind: `data-*.tfrecord.gz`."""
    prefix, suffix = file_name
    return f"{prefix}-*{suffix}"


EXAMPLES_PATTERN = shard_pattern(EXAMPLES_FILE)
