"""The layering rule: one floor of jobs above one shared layer.

A job (a top-level module of beam_jobs/ with a `main`) imports the shared layer (beam_jobs.lib),
never another job; nothing under beam_jobs/ imports the demo model; model/train.py uses the shared
layer like any job. Every job answers `--help`.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "beam_jobs"


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _has_main(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def _imported_modules(tree: ast.Module) -> set[str]:
    """Every module an import statement names, `from a import b` as both `a` and `a.b`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


JOBS = sorted(
    path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__" and _has_main(_tree(path))
)
JOB_MODULES = {f"beam_jobs.{job}" for job in JOBS}


def test_the_jobs_are_the_top_level_modules_with_a_main():
    assert set(JOBS) == {
        "evaluate",
        "feedback",
        "infer",
        "ingest",
        "model_card",
        "push",
        "resume",
        "run_page",
        "statistics",
        "transform",
        "validate",
    }
    others = {path.stem for path in PACKAGE.glob("*.py")} - set(JOBS)
    assert others == {"__init__"}, f"shared modules belong under beam_jobs/lib/: {others}"


@pytest.mark.parametrize("job", JOBS)
def test_a_job_imports_no_other_job(job):
    imported = _imported_modules(_tree(PACKAGE / f"{job}.py"))
    assert not imported & (JOB_MODULES - {f"beam_jobs.{job}"})


def test_the_shared_layer_imports_no_job():
    for path in (PACKAGE / "lib").rglob("*.py"):
        assert not _imported_modules(_tree(path)) & JOB_MODULES, path


def test_nothing_in_beam_jobs_imports_the_demo_model():
    for path in PACKAGE.rglob("*.py"):
        imported = _imported_modules(_tree(path))
        assert not {name for name in imported if name == "model" or name.startswith("model.")}, path


def test_training_uses_the_shared_layer_and_no_job():
    imported = _imported_modules(_tree(REPO_ROOT / "model" / "train.py"))
    assert not imported & JOB_MODULES
    assert "beam_jobs.lib" in imported


@pytest.mark.parametrize("job", JOBS)
def test_every_job_answers_help(job):
    result = subprocess.run(
        [sys.executable, "-m", f"beam_jobs.{job}", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout


def _demo_names() -> set[str]:
    """What only the demo knows: its feature keys, label value and the paths of its code."""
    from model import features

    keys = {*features.ONE_HOT_FEATURES, *features.BUCKET_FEATURES, *features.TEXT_FEATURES}
    keys |= {features.LABEL_KEY, features.transformed_name(features.LABEL_KEY)}
    # Short keys ("state", "issue", "product") are ordinary words; look for them as strings.
    quoted = {f'"{key}"' for key in keys} | {f"'{key}'" for key in keys}
    modules = {"model.preprocessing", "model.model", "model.features", "model/preprocessing"}
    return quoted | modules | {"eval_config.pbtxt"}


def test_nothing_in_beam_jobs_names_the_demo():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        found = sorted(name for name in _demo_names() if name in text)
        assert not found, f"{path.relative_to(REPO_ROOT)} names the demo's {found}"
