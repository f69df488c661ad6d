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

__all__ = ["main", "newest_version"]


def newest_version(directory: str) -> str | None:
    """The largest integer-named entry directly below `directory` (a model export), or None."""
    prefix = directory.rstrip("/") + "/"
    names = {m.path[len(prefix) :].split("/", 1)[0] for m in artifacts.list_files(prefix + "**")}
    versions = sorted(int(name) for name in names if name.isdigit())
    return str(versions[-1]) if versions else None


@cli.job_command(__doc__.split("\n\n")[0])
@click.option(
    "--action",
    type=click.Choice(["write", "clear", "newest_version"]),
    required=True,
    help="write: stdin into --path; clear: delete files matching --path; newest_version: print "
    "the largest numbered entry of --path.",
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
        version = newest_version(path)
        if version is None:
            raise cli.JobError(f"{path} holds no numbered version")
        click.echo(version)


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
