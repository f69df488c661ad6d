"""The README's user module, run as a new user would: copied out of the README, on a data set the
project never saw (tests/synthetic.py), through every stage with the commands the README shows."""

from __future__ import annotations

import pathlib
import re

import pytest
from click.testing import CliRunner

from beam_jobs import transform
from beam_jobs.lib import artifacts, model_contract
from model import train
from tests.conftest import REPO_ROOT
from tests.synthetic import CLASSES

README = REPO_ROOT / "README.md"
_MODULE_BLOCK = re.compile(r"```python\n# my_module.py\n(?P<code>.*?)```", re.DOTALL)


def readme_module(directory: pathlib.Path) -> pathlib.Path:
    """The README's `my_module.py`, written into `directory`."""
    found = _MODULE_BLOCK.search(README.read_text())
    assert found, "the README has no my_module.py block"
    path = directory / "my_module.py"
    path.write_text(found.group("code"))
    return path


def ok(main, *args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def readme_pipeline(animals_ingested, animals_schema, tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("readme_pipeline")
    module = readme_module(root)
    ok(
        transform.main,
        f"--examples_dir={animals_ingested}",
        f"--schema={animals_schema}",
        f"--output_dir={root / 'transform'}",
        f"--preprocessing_fn={module}:preprocessing_fn",
    )
    ok(
        train.main,
        f"--transform_dir={root / 'transform'}",
        f"--output_dir={root / 'train'}",
        f"--model_fn={module}:build_model",
        "--label_key=species_xf",
        '--hparams={"units": 12}',
        "--train_steps=150",
        "--batch_size=32",
    )
    manifest = artifacts.read_manifest(str(root / "train"), stages=("train",))
    return {"root": root, "export": pathlib.Path(manifest.extra["export_path"])}


def test_the_readme_module_trains_a_multiclass_model_that_names_its_classes(readme_pipeline):
    manifest = artifacts.read_manifest(str(readme_pipeline["root"] / "train"), stages=("train",))
    assert manifest.parameters["hparams"] == {"units": 12}
    assert manifest.extra["metrics"]["eval"]["sparse_categorical_accuracy"] > 0.8
    contract = model_contract.read_contract(str(readme_pipeline["export"]))
    assert contract.task == model_contract.MULTICLASS
    assert sorted(contract.classes) == sorted(CLASSES)
