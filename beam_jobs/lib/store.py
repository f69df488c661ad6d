"""File access for shell scripts on any store, for a `--pipeline_root` on `gs://` or `s3://`.

    python -m beam_jobs.lib.store --action=write --path=<file> [Beam options]  # stdin into it
    python -m beam_jobs.lib.store --action=clear --path=<pattern> [Beam options]
    python -m beam_jobs.lib.store --action=newest_version --path=<dir> [Beam options]

`scripts/run_pipeline.sh` uses it where `ls`, `rm` and `mv` reach only local paths; the Beam
options (`--s3_endpoint_url=...`) set up the store as they do for every stage.
"""

from __future__ import annotations

import sys

import click
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli

__all__ = ["main"]


@cli.job_command(__doc__.split("\n\n")[0])
@click.option(
    "--action",
    type=click.Choice(["write", "clear", "newest_version"]),
    required=True,
    help="write: stdin into --path; clear: delete files matching --path; newest_version: print "
    "the newest model version (with saved_model.pb) under --path.",
)
@click.option("--path", required=True, help="A file, a pattern or a directory, by action.")
def main(action: str, path: str) -> None:
    if action == "write":
        artifacts.write_bytes(path, sys.stdin.buffer.read())
    elif action == "clear":
        files = [metadata.path for metadata in artifacts.list_files(path)]
        if files:
            FileSystems.delete(files)
    else:
        # The same versions push and infer see: integer-named, with their saved_model.pb.
        versions = artifacts.serving_versions(path)
        if not versions:
            raise cli.JobError(f"{path} holds no numbered version")
        click.echo(versions[-1])


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
