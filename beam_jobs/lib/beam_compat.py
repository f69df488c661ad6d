"""Python SDK workers for Beam's Prism runner: a worker boot and a worker pool on 127.0.0.1.

Prism starts a PROCESS environment's command, and a worker pool starts its container executable,
as Beam's SDK container boot program is started: `<command> --id=<worker id>
--provision_endpoint=<host:port> [...]`. The boot fetches the worker's provisioning information
(pipeline options, endpoints, staged artifacts), sets the environment `sdk_worker_main` reads and
replaces itself with a fresh `python -m apache_beam.runners.worker.sdk_worker_main`.

Why our own boot: Python SDK 2.60 sends the `worker_id` header on its state channel only when
`WORKER_ID` is set in the worker's environment (its state channel ignores the id the harness was
given; apache/beam#33450, fixed in Beam 2.63 by passing the id to the state handler factory).
Prism routes every state request by that header, so 2.60 workers without it fail at the first side
input. Setting `WORKER_ID` before the SDK is imported, as Beam's container boot does, is enough:
nothing of Beam is patched. Beam's own worker pool binds to every interface, so `serve_pool` binds
the same servicer to 127.0.0.1.

    python -m beam_jobs.lib.beam_compat boot --id=<id> --provision_endpoint=<host:port>
    python -m beam_jobs.lib.beam_compat pool --port=<port> --boot_command=<executable>
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

__all__ = ["boot", "main", "parse_worker_id", "serve_pool", "worker_environment"]

_LOGGER = logging.getLogger(__name__)

# The module sdk_worker_main reads its endpoints, options and id from the environment.
SDK_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"


def parse_worker_id(raw: str) -> str:
    """The worker id as the runner registered it.

    Prism 2.77 passes `--id='<id>'` with the quotes inside the argument; a worker pool passes
    `--id=<id>`. Either way the header must carry the bare id.
    """
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def worker_environment(
    info: object, worker_id: str, semi_persistent_dir: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment `sdk_worker_main` expects, from a `ProvisionInfo` message.

    Args:
        info: the worker's `beam_provision_api_pb2.ProvisionInfo`.
        worker_id: the bare worker id (see `parse_worker_id`).
        semi_persistent_dir: where staged artifacts were written (under `staged/`).
        base: the environment to extend (usually `os.environ`).

    Returns:
        `base` plus WORKER_ID, PIPELINE_OPTIONS, the API service descriptors (text protos),
        RUNNER_CAPABILITIES and SEMI_PERSISTENT_DIRECTORY.
    """
    from google.protobuf import json_format, text_format

    env = dict(base)
    env["WORKER_ID"] = worker_id
    env["PIPELINE_OPTIONS"] = json_format.MessageToJson(info.pipeline_options)
    env["SEMI_PERSISTENT_DIRECTORY"] = semi_persistent_dir
    env["RUNNER_CAPABILITIES"] = " ".join(info.runner_capabilities)
    descriptors = {
        "CONTROL_API_SERVICE_DESCRIPTOR": "control_endpoint",
        "LOGGING_API_SERVICE_DESCRIPTOR": "logging_endpoint",
        "STATUS_API_SERVICE_DESCRIPTOR": "status_endpoint",
    }
    for variable, field in descriptors.items():
        if info.HasField(field):
            env[variable] = text_format.MessageToString(getattr(info, field))
    return env


def _provision_info(endpoint: str, worker_id: str) -> object:
    """Asks the runner's provision service for this worker's `ProvisionInfo`."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", worker_id)],
            timeout=60,
        )
    return response.info


def _retrieve_artifacts(info: object, worker_id: str, staged_dir: pathlib.Path) -> int:
    """Writes the job's staged files (e.g. a pickled main session) under `staged_dir`.

    Returns:
        The number of artifacts written.
    """
    import grpc
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import (
        beam_artifact_api_pb2,
        beam_artifact_api_pb2_grpc,
        beam_runner_api_pb2,
    )

    if not info.dependencies:
        return 0
    staging_role = common_urns.artifact_roles.STAGING_TO.urn
    staged_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with grpc.insecure_channel(info.artifact_endpoint.url) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for artifact in info.dependencies:
            if artifact.role_urn != staging_role:
                continue
            payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                artifact.role_payload
            )
            target = staged_dir / pathlib.PurePath(payload.staged_name).name
            request = beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)
            with open(target, "wb") as out:  # a local scratch file of this worker
                for chunk in stub.GetArtifact(request, metadata=[("worker_id", worker_id)]):
                    out.write(chunk.data)
            written += 1
    return written


def boot(argv: Sequence[str]) -> None:
    """Starts one SDK worker for the runner that named it; does not return.

    Args:
        argv: `--id=<worker id> --provision_endpoint=<host:port>`; the other flags a worker pool
            passes (`--control_endpoint`, ...) are ignored, as provisioning names them too.
    """
    parser = argparse.ArgumentParser(prog="beam_compat boot")
    parser.add_argument("--id", required=True)
    parser.add_argument("--provision_endpoint", required=True)
    args, _ = parser.parse_known_args(argv)
    worker_id = parse_worker_id(args.id)
    info = _provision_info(args.provision_endpoint, worker_id)
    semi_persistent_dir = tempfile.mkdtemp(prefix="beam-worker-")
    count = _retrieve_artifacts(info, worker_id, pathlib.Path(semi_persistent_dir, "staged"))
    _LOGGER.info("worker %s: %d staged artifacts in %s", worker_id, count, semi_persistent_dir)
    env = worker_environment(info, worker_id, semi_persistent_dir, os.environ)
    # A worker pool never reads its workers' stdout: send it to stderr so a full pipe cannot block.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.execve(sys.executable, [sys.executable, "-m", SDK_WORKER_MODULE], env)


def serve_pool(port: int, boot_command: str) -> None:
    """Serves Beam's external worker pool on 127.0.0.1:`port` until terminated.

    Each worker the runner asks for is a process of its own, started as `boot_command`.
    """
    from concurrent import futures

    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = BeamFnExternalWorkerPoolServicer(use_process=True, container_executable=boot_command)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"beam_compat pool: cannot listen on 127.0.0.1:{port}")
    server.start()
    _LOGGER.info("worker pool listening on 127.0.0.1:%d", bound)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop(grace=5)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `boot ...` (one worker) or `pool --port=P --boot_command=C`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["boot"]:
        boot(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="beam_compat")
    commands = parser.add_subparsers(dest="command", required=True)
    pool = commands.add_parser("pool", help="serve a worker pool on 127.0.0.1")
    pool.add_argument("--port", type=int, required=True)
    pool.add_argument("--boot_command", required=True)
    args = parser.parse_args(argv)
    serve_pool(args.port, args.boot_command)


if __name__ == "__main__":
    main()
