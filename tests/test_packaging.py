"""What a remote worker sees: the package as `--setup_file` stages it, installed in a fresh venv.

Dataflow cannot run here, so this runs the part of a Dataflow submission that can go wrong on our
side: Beam's own stager builds the workflow tarball from setup.py, a fresh virtual environment
installs it (with the pinned stack, as the SDK container has it), and jobs run from there, away
from the source tree, importing the demo's preprocessing_fn from the installed package.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.stager import Stager

from beam_jobs.lib import artifacts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO_ROOT / "schemas" / "consumer_complaints" / "schema.pbtxt"


def staged_workflow_tarball(temp_dir: pathlib.Path) -> pathlib.Path:
    """The workflow tarball exactly as Beam stages it for `--setup_file=./setup.py`."""
    options = PipelineOptions([f"--setup_file={REPO_ROOT / 'setup.py'}"])
    resources = Stager.create_job_resources(
        options, str(temp_dir), log_submission_env_dependencies=False
    )
    for resource in resources:
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(resource.role_payload)
        if role.staged_name == "workflow.tar.gz":
            payload = beam_runner_api_pb2.ArtifactFilePayload.FromString(resource.type_payload)
            return pathlib.Path(payload.path)
    raise AssertionError("Beam staged no workflow tarball for --setup_file")


def worker_environment(path: pathlib.Path, tarball: pathlib.Path) -> pathlib.Path:
    """A fresh venv seeing the pinned stack (as the SDK image has it) that installs the tarball."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A plain path line: the stack's .pth files (our own editable install among them) stay
    # unprocessed, so only the installed tarball provides beam_jobs and model.
    pathlib.Path(site, "pinned_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(tarball),
        ],
        check=True,
    )
    return python


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory) -> pathlib.Path:
    temp_dir = tmp_path_factory.mktemp("staging")
    return worker_environment(temp_dir / "worker", staged_workflow_tarball(temp_dir))


def test_the_staged_tarball_carries_the_package_and_its_data(tmp_path):
    tarball = staged_workflow_tarball(tmp_path)
    with tarfile.open(tarball) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for module in (
        "beam_jobs/ingest.py",
        "beam_jobs/transform.py",
        "model/preprocessing.py",
        "model/features.py",
        "setup.py",
    ):
        assert module in names


def test_jobs_run_from_the_installed_package(worker_python, tmp_path):
    data = tmp_path / "complaints.csv"
    subprocess.run(
        [
            worker_python,
            str(REPO_ROOT / "scripts" / "generate_demo_data.py"),
            f"--output={data}",
            "--rows=300",
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run(
        [worker_python, "-c", "import beam_jobs, model.preprocessing as p; print(p.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(worker_python.parents[1]) in where and str(REPO_ROOT) not in where
    for job, flags in (
        ("ingest", [f"--input={data}", f"--schema={SCHEMA}", "--output_dir=ingest"]),
        (
            "transform",
            [
                "--examples_dir=ingest",
                f"--schema={SCHEMA}",
                "--output_dir=transform",
                "--preprocessing_fn=model.preprocessing:preprocessing_fn",
            ],
        ),
    ):
        result = subprocess.run(
            [worker_python, "-m", f"beam_jobs.{job}", *flags, "--runner=DirectRunner"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    manifest = artifacts.read_manifest(str(tmp_path / "transform"))
    assert sum(manifest.counts["examples_transformed"].values()) == 300
