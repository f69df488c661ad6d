"""Feature types of examples checked against a schema before a pipeline runs.

Ingest records each feature's `tf.Example` type in its manifest (`feature_types`). A stage that
decodes examples with a schema (transform) compares the two first: a feature typed INT in the
examples and BYTES in the schema would otherwise fail deep inside tfx_bsl's decoder, after start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.lib import artifacts
from beam_jobs.lib.cli import JobError

__all__ = ["MANIFEST_KEY", "check_against_schema", "recorded_or_sampled", "types_in_examples"]

MANIFEST_KEY = "feature_types"
_KIND_TYPES = {"int64_list": "INT", "float_list": "FLOAT", "bytes_list": "BYTES"}
_SCHEMA_TYPES = {schema_pb2.INT: "INT", schema_pb2.FLOAT: "FLOAT", schema_pb2.BYTES: "BYTES"}
# Examples read per file where a manifest records no types (outputs of older runs, feedback).
_SAMPLED_EXAMPLES = 1000


def types_in_examples(paths: Iterable[str], limit: int = _SAMPLED_EXAMPLES) -> dict[str, str]:
    """The type of every feature met in the first `limit` examples of each TFRecord file."""
    found: dict[str, str] = {}
    for path in paths:
        for index, record in enumerate(artifacts.read_tfrecords(path)):
            if index >= limit:
                break
            for name, feature in tf.train.Example.FromString(record).features.feature.items():
                kind = feature.WhichOneof("kind")
                if kind in _KIND_TYPES:
                    found.setdefault(name, _KIND_TYPES[kind])
    return found


def recorded_or_sampled(
    manifest: artifacts.Manifest, example_files: Iterable[str]
) -> dict[str, str]:
    """The feature types a manifest records, else those found in the first examples."""
    recorded = manifest.extra.get(MANIFEST_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    return types_in_examples(example_files)


def check_against_schema(
    feature_types: Mapping[str, str], schema: schema_pb2.Schema, examples_dir: str, schema_path: str
) -> None:
    """Fails in one line where a feature's type in the examples differs from the schema's.

    Raises:
        JobError: names the feature, both types and what to do.
    """
    mismatched = [
        (feature.name, feature_types[feature.name], _SCHEMA_TYPES[feature.type])
        for feature in schema.feature
        if feature.type in _SCHEMA_TYPES
        and feature.name in feature_types
        and feature_types[feature.name] != _SCHEMA_TYPES[feature.type]
    ]
    if not mismatched:
        return
    name, actual, expected = mismatched[0]
    more = f" (and {len(mismatched) - 1} more feature(s))" if len(mismatched) > 1 else ""
    raise JobError(
        f"feature {name} is {actual} in the examples of {examples_dir} but {expected} in "
        f"--schema={schema_path}{more}; ingest with --schema={schema_path} so the types agree"
    )
