"""The model contract: what an export says about itself, written and read back."""

import json

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.lib import cli, model_contract


def _schema() -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    feature = schema.feature.add(name="colour", type=schema_pb2.BYTES)
    feature.presence.min_fraction = 1.0
    schema.feature.add(name="size", type=schema_pb2.FLOAT)
    return schema


def test_contract_and_raw_schema_round_trip(tmp_path):
    contract = model_contract.ModelContract(
        task=model_contract.MULTICLASS,
        transformed_label_key="species_xf",
        label_key="species",
        classes=["cat", "dog", "owl"],
    )
    model_contract.write_contract(str(tmp_path), contract, _schema())
    assert model_contract.read_contract(str(tmp_path)) == contract
    assert model_contract.read_raw_schema(str(tmp_path)) == _schema()
    written = json.loads((tmp_path / "assets" / "model_contract.json").read_text())
    assert written["classes"] == ["cat", "dog", "owl"]
    assert written["format_version"] == model_contract.FORMAT_VERSION
    assert contract.class_name(2) == "owl"
    assert contract.class_name(3) == "3"  # An out-of-vocabulary bucket keeps its index.


def test_an_export_without_a_contract_reads_as_none(tmp_path):
    assert model_contract.read_contract(str(tmp_path)) is None
    assert model_contract.read_raw_schema(str(tmp_path)) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ({"task": "ranking", "transformed_label_key": "y"}, "not one of"),
        ({"transformed_label_key": "y"}, "no task"),
        ({"task": "regression", "transformed_label_key": "y", "format_version": 99}, "newer"),
    ],
)
def test_a_bad_contract_is_named(tmp_path, value, message):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "model_contract.json").write_text(json.dumps(value))
    with pytest.raises(cli.JobError, match=message) as raised:
        model_contract.read_contract(str(tmp_path))
    assert "model_contract.json" in str(raised.value)
