"""What an exported model says about itself: its raw schema, its task, its label and its classes.

`model.train` writes two files into the export's `assets/` folder, beside the vocabularies of the
TFT layer, before the export is renamed into place:

- `raw_schema.pbtxt`: the TFDV schema of the raw data the model was trained on (the transform's
  input schema, label included), so infer and evaluate type raw records as training did;
- `model_contract.json`: the task (`binary_classification`, `multiclass_classification` or
  `regression`), the raw and transformed label keys, the class names by index when the label has
  a vocabulary, and the signature and output names of the export.

Jobs that read a model take their defaults from here rather than from any one data set. An export
without these files (made before they existed, or by another tool) reads as None, and the jobs
then need the flags they always needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.lib import artifacts, layout, tfdv_io
from beam_jobs.lib.cli import JobError

__all__ = [
    "ASSETS_DIR",
    "BINARY",
    "CONTRACT_FILE",
    "FORMAT_VERSION",
    "MULTICLASS",
    "RAW_SCHEMA_FILE",
    "REGRESSION",
    "TASKS",
    "ModelContract",
    "contract_path",
    "raw_schema_path",
    "read_contract",
    "read_raw_schema",
    "write_contract",
]

ASSETS_DIR = "assets"
CONTRACT_FILE = "model_contract.json"
RAW_SCHEMA_FILE = "raw_schema.pbtxt"
FORMAT_VERSION = 1
BINARY = "binary_classification"
MULTICLASS = "multiclass_classification"
REGRESSION = "regression"
TASKS = (BINARY, MULTICLASS, REGRESSION)
_REEXPORT = "re-export the model with model.train"


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """An export's self-description (`assets/model_contract.json`).

    Attributes:
        task: one of `TASKS`. A binary model outputs one probability of class 1 per example, a
            multi-class model one probability per class, a regression model one value.
        transformed_label_key: the transformed feature the model was trained against.
        label_key: the raw feature the label came from, None if the raw data has no such feature.
        classes: class names by class index (the label's TFT vocabulary), None when unknown (an
            integer label, or a binary label mapped to 0/1 by the preprocessing_fn).
        signature_name: the serving signature, taking serialized raw `tf.Example`s.
        transform_signature: the signature returning the transformed features (label included).
        output_key: the serving signature's output.
    """

    task: str
    transformed_label_key: str
    label_key: str | None = None
    classes: tuple[str, ...] | None = None
    signature_name: str = layout.SERVING_SIGNATURE
    transform_signature: str = layout.TRANSFORM_SIGNATURE
    output_key: str = layout.OUTPUT_KEY

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(name) for name in self.classes))

    def class_name(self, index: int) -> str:
        """The name of class `index`: from `classes` when known, else the index as text."""
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)

    def to_json(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["classes"] = list(self.classes) if self.classes is not None else None
        value["format_version"] = FORMAT_VERSION
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ModelContract:
        """The contract of a parsed `model_contract.json`; unknown keys are ignored.

        Raises:
            ValueError: a newer format, a missing task or label key, or an unknown task.
        """
        version = value.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"format_version {version!r}: written by a newer version")
        fields = {field.name for field in dataclasses.fields(cls)}
        known = {key: item for key, item in value.items() if key in fields}
        missing = [key for key in ("task", "transformed_label_key") if key not in known]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        classes = known.get("classes")
        if classes is not None:
            known["classes"] = tuple(classes)
        return cls(**known)


def contract_path(model_path: str) -> str:
    return FileSystems.join(model_path, ASSETS_DIR, CONTRACT_FILE)


def raw_schema_path(model_path: str) -> str:
    return FileSystems.join(model_path, ASSETS_DIR, RAW_SCHEMA_FILE)


def write_contract(
    model_path: str, contract: ModelContract, raw_schema: schema_pb2.Schema | None
) -> None:
    """Writes the contract (and the raw schema, if given) into `model_path/assets/`."""
    if raw_schema is not None:
        text = text_format.MessageToString(raw_schema)
        artifacts.write_bytes(raw_schema_path(model_path), text.encode("utf-8"))
    artifacts.write_json(contract_path(model_path), contract.to_json())


def read_contract(model_path: str) -> ModelContract | None:
    """The export's contract, or None when it has none.

    Raises:
        JobError: the file exists but is not a contract this version reads (named, in one line).
    """
    path = contract_path(model_path)
    if not FileSystems.exists(path):
        return None
    try:
        return ModelContract.from_json(artifacts.read_json(path))
    except (ValueError, TypeError, AttributeError) as error:
        raise JobError(f"{path} is not a model contract: {error}; {_REEXPORT}") from None


def read_raw_schema(model_path: str) -> schema_pb2.Schema | None:
    """The raw schema the export was trained on, or None when it carries none.

    Raises:
        JobError: the file exists but is not a schema (named, in one line).
    """
    path = raw_schema_path(model_path)
    if not FileSystems.exists(path):
        return None
    try:
        return tfdv_io.read_schema(path)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise JobError(f"{path} is not a TFDV schema: {error}; {_REEXPORT}") from None
