"""The Prism worker boot's pure parts: worker ids and the environment sdk_worker_main reads."""

from __future__ import annotations

import json

import pytest
from apache_beam.portability.api import beam_provision_api_pb2, endpoints_pb2
from google.protobuf import struct_pb2, text_format

from beam_jobs.lib import beam_compat


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("'job-001[job]_env_1'", "job-001[job]_env_1"),  # Prism 2.77 quotes it
        ("job-002_env_1", "job-002_env_1"),  # a worker pool does not
        ('"w"', "w"),
        ("'", "'"),
    ],
)
def test_parse_worker_id_drops_the_quotes_prism_adds(raw, expected):
    assert beam_compat.parse_worker_id(raw) == expected


def test_worker_environment_has_the_id_endpoints_and_options():
    options = struct_pb2.Struct()
    options.update({"beam:option:job_name:v1": "ingest"})
    info = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=options,
        control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:5"),
        logging_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:6"),
        runner_capabilities=["beam:protocol:a:v1", "beam:protocol:b:v1"],
    )
    env = beam_compat.worker_environment(info, "w-1", "/scratch", {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["WORKER_ID"] == "w-1"
    assert env["SEMI_PERSISTENT_DIRECTORY"] == "/scratch"
    assert json.loads(env["PIPELINE_OPTIONS"]) == {"beam:option:job_name:v1": "ingest"}
    control = text_format.Parse(
        env["CONTROL_API_SERVICE_DESCRIPTOR"], endpoints_pb2.ApiServiceDescriptor()
    )
    assert control.url == "127.0.0.1:5"
    assert "LOGGING_API_SERVICE_DESCRIPTOR" in env
    assert "STATUS_API_SERVICE_DESCRIPTOR" not in env  # not provisioned, so not set
    assert env["RUNNER_CAPABILITIES"] == "beam:protocol:a:v1 beam:protocol:b:v1"
