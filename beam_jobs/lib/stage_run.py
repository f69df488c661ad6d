"""The run skeleton of a Beam stage: run the pipeline into the staging folder, read its counts back.

Every Beam job runs the same way inside its `StagedOutput`: build the graph, whose `WriteCounts`
step leaves one `.counts.json` in the staging folder; run it; read the counts back and delete the
file before anything is published; then check them, complete the shards and publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.lib import artifacts, layout

__all__ = ["WriteCounts", "read_counts", "run_beam_stage"]


class WriteCounts(beam.PTransform[beam.PCollection[tuple[str, int]], beam.PCollection[None]]):
    """(name, count) pairs, summed per name → one JSON object `{name: count}` in `.counts.json`.

    The file is written once, by one worker, even when no count came (an empty object then).
    """

    def __init__(self, staging_dir: str) -> None:
        super().__init__()
        self._path = FileSystems.join(staging_dir, layout.COUNTS_FILE)

    def expand(self, counts: beam.PCollection[tuple[str, int]]) -> beam.PCollection[None]:
        path = self._path  # A local: workers may not see this object's attributes pickled alike.
        return (
            counts
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsToDict" >> beam.combiners.ToDict()
            | "WriteCounts" >> beam.Map(lambda found: artifacts.write_json(path, found))
        )


def read_counts(staging_dir: str) -> dict[str, Any]:
    """The counts `WriteCounts` left in a staging folder ({} if none), the file deleted."""
    path = FileSystems.join(staging_dir, layout.COUNTS_FILE)
    if not FileSystems.exists(path):
        return {}
    counts = artifacts.read_json(path)
    FileSystems.delete([path])
    return counts


def run_beam_stage(
    staged: artifacts.StagedOutput,
    options: PipelineOptions,
    build: Callable[[beam.Pipeline], None],
    *,
    context: contextlib.AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Runs the pipeline `build(pipeline)` adds its steps to; returns the counts it wrote.

    Args:
        staged: the stage's output, entered by the caller (`with staged:`).
        options: the Beam options of the run.
        build: adds the job's graph, which writes under `staged.staging_dir`.
        context: entered around the pipeline (e.g. `tft_beam.Context`), if given.

    Returns:
        The counts the graph's `WriteCounts` wrote, read back from the staging folder.
    """
    with beam.Pipeline(options=options) as pipeline, context or contextlib.nullcontext():
        build(pipeline)
    return read_counts(staged.staging_dir)
