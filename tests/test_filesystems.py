"""Object-store plumbing against moto's S3 server on 127.0.0.1: flags reach every program's file
system, store errors are reported, empty objects are written, a failed push leaves nothing."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import uuid

import boto3
import pytest
import requests
from click.testing import CliRunner

from beam_jobs import push
from beam_jobs.lib import artifacts, cli, filesystems, store
from tests.test_push import save_model, write_evaluation

moto_server = pytest.importorskip("moto.server")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, with test credentials in the environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    yield f"http://{host}:{port}"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def bucket(s3_endpoint):
    """A new bucket; its name."""
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION).create_bucket(Bucket=name)
    return name


def s3_flags(endpoint: str) -> list[str]:
    return [f"--s3_endpoint_url={endpoint}", f"--s3_region_name={REGION}"]


def objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object's key and size below a prefix, as the store holds them."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: item["Size"] for item in listed}


def test_a_program_that_is_no_pipeline_takes_the_s3_flags(s3_endpoint, bucket):
    result = CliRunner().invoke(
        store.main,
        ["--action=write", f"--path=s3://{bucket}/run_status/run.json", *s3_flags(s3_endpoint)],
        input=b"{}\n",
    )
    assert result.exit_code == 0, result.output
    assert objects(s3_endpoint, bucket) == {"run_status/run.json": 3}


def test_a_program_that_is_no_pipeline_refuses_a_flag_beam_does_not_know(tmp_path):
    result = CliRunner().invoke(
        push.main, [f"--serving_dir={tmp_path}", "--rollback", "--serving_dri=elsewhere"]
    )
    assert result.exit_code == cli.EXIT_USAGE
    assert "no such option: --serving_dri" in result.output
    # Beam's own flags pass (a chain gives every stage the same ones).
    result = CliRunner().invoke(
        push.main, [f"--serving_dir={tmp_path}", "--rollback", "--runner=DirectRunner"]
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "has 0 version(s)" in result.output


def test_list_files_reports_what_the_store_refuses(s3_endpoint, bucket, tmp_path):
    filesystems.apply(cli.pipeline_options(s3_flags(s3_endpoint)))
    assert artifacts.list_files(f"s3://{bucket}/nothing/*") == []
    assert artifacts.list_files(str(tmp_path / "missing" / "*.csv")) == []
    # From now on moto checks credentials: "testing" is no known key.
    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        with pytest.raises(cli.JobError, match=r"cannot list s3://.*InvalidAccessKeyId") as error:
            artifacts.list_files(f"s3://{bucket}/data/*.csv")
    finally:
        requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
    assert "\n" not in str(error.value)


def test_empty_files_and_markers_are_written_on_s3(s3_endpoint, bucket):
    filesystems.apply(cli.pipeline_options(s3_flags(s3_endpoint)))
    artifacts.write_bytes(f"s3://{bucket}/evaluate/BLESSED", b"")
    assert artifacts.write_tfrecords(f"s3://{bucket}/ingest/eval/data-00000.tfrecord", []) == 0
    assert objects(s3_endpoint, bucket) == {
        "evaluate/BLESSED": 0,
        "ingest/eval/data-00000.tfrecord": 0,
    }


@pytest.fixture
def blessed(tmp_path):
    model = save_model(tmp_path / "model", 2.0)
    return model, write_evaluation(tmp_path / "evaluation", model, blessed=True)


def run_push(endpoint: str, model, evaluation, serving: str):
    return CliRunner().invoke(
        push.main,
        [
            f"--model_dir={model}",
            f"--evaluation_dir={evaluation}",
            f"--serving_dir={serving}",
            *s3_flags(endpoint),
        ],
    )


def test_a_push_to_s3_serves_one_version_and_leaves_no_staging(s3_endpoint, bucket, blessed):
    result = run_push(s3_endpoint, *blessed, f"s3://{bucket}/serving")
    assert result.exit_code == 0, result.output
    keys = objects(s3_endpoint, bucket)
    assert keys and not [key for key in keys if push.STAGING_PREFIX in key]
    versions = {key.split("/")[1] for key in keys}
    assert len(versions) == 1 and versions.pop().isdigit()


def test_a_push_that_fails_on_s3_leaves_nothing_behind(s3_endpoint, bucket, blessed, monkeypatch):
    renamed = []
    rename = artifacts.FileSystems.rename

    def rename_until_the_store_fails(sources, destinations):
        if len(renamed) == 3 and push.STAGING_PREFIX in sources[0]:
            raise OSError(errno.EIO, "the store went away", destinations[0])
        rename(sources, destinations)
        renamed.append(destinations[0])

    monkeypatch.setattr(artifacts.FileSystems, "rename", rename_until_the_store_fails)
    result = run_push(s3_endpoint, *blessed, f"s3://{bucket}/serving")
    assert result.exit_code == cli.EXIT_ERROR
    assert "the store went away" in result.output and "nothing was pushed" in result.output
    assert len(renamed) > 3  # Moved, then moved back before the staging copy was deleted.
    assert objects(s3_endpoint, bucket) == {}


def test_exit_codes_survive_tensorflow_io(s3_endpoint, bucket):
    """tensorflow-io aborts at exit (status 134) once loaded; the job's own code must win."""
    pytest.importorskip("tensorflow_io")
    flags = s3_flags(s3_endpoint)
    code = (
        "import sys\n"
        "from beam_jobs.lib import cli, filesystems\n"
        "import tensorflow as tf\n"
        f"filesystems.apply(cli.pipeline_options({flags!r}), ['s3://{bucket}/x'])\n"
        f"with tf.io.gfile.GFile('s3://{bucket}/tf/a.txt', 'w') as handle:\n"
        "    handle.write('read by TensorFlow')\n"
        f"print(tf.io.gfile.GFile('s3://{bucket}/tf/a.txt').read())\n"
        "filesystems.exit_process(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == cli.EXIT_VALIDATION_ANOMALIES, result.stderr[-2000:]
    assert "read by TensorFlow" in result.stdout
