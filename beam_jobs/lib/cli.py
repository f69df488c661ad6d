"""Command-line plumbing shared by every job: flag forwarding to Beam, errors and exit codes.

Every job is a click command whose own flags are snake_case; every flag it does not define is
collected unchanged and handed to Beam's `PipelineOptions`, so `--runner=FlinkRunner
--flink_master=host:8081` or `--runner=DataflowRunner --project=p ...` work without the job knowing
about them. Write Beam flags as `--flag=value`: click cannot know whether an unknown flag takes
a value. Programs that are not pipelines (`job_command`: training, push, model cards) take Beam's
flags too, so one set of options serves a whole chain, and refuse any other unknown flag. Both
give the options to the file systems (`filesystems.apply`) before the job's first file access.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.lib import filesystems

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_BLESSED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VALIDATION_ANOMALIES",
    "JobError",
    "NotBlessedError",
    "ValidationAnomaliesError",
    "beam_job_command",
    "job_command",
    "pipeline_options",
    "reports_job_errors",
    "run_module_main",
    "split_list",
    "tensorflow_reason",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VALIDATION_ANOMALIES = 3
EXIT_NOT_BLESSED = 4


class JobError(Exception):
    """An expected failure: reported as one line on stderr, without a traceback."""

    exit_code = EXIT_ERROR


class ValidationAnomaliesError(JobError):
    """Validation found anomalies; a chain of jobs stops here."""

    exit_code = EXIT_VALIDATION_ANOMALIES


class NotBlessedError(JobError):
    """The candidate model did not pass its evaluation thresholds."""

    exit_code = EXIT_NOT_BLESSED


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Builds Beam's options from the flags a job did not define itself.

    Raises:
        click.UsageError: a forwarded argument is not a flag (a stray positional argument).
    """
    stray = [arg for arg in beam_args if not arg.startswith("-")]
    if stray:
        raise click.UsageError(
            f"unexpected argument {stray[0]!r}: Beam options are written as --flag=value"
        )
    return PipelineOptions(list(beam_args))


def tensorflow_reason(message: str) -> str:
    """The line of a TensorFlow error message that says what was wrong.

    TensorFlow names a bad feature on a line of its own ("Name: <unknown>, Feature: x (data type:
    string) is required ...", "... Key: x, Index: 0.  Data types don't match ..."), between a
    "Graph execution error:" header and the failing node.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    details = [line for line in lines if not line.endswith(":") and not line.startswith("[[")]
    named = [line for line in details if "Feature:" in line or "Key:" in line]
    return (named or details or lines or [""])[0].removeprefix("Name: <unknown>, ")


def split_list(value: str | None) -> list[str]:
    """Splits a comma-separated flag value into its non-empty, stripped items."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def reports_job_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a command body: sets up logging, turns a `JobError` into one line and its exit code.

    For every command, Beam job or not (training, push), so all report errors the same way.
    """

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        try:
            return main(*args, **kwargs)
        except JobError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)

    return guarded


def _applies_file_system_options(main: Callable[..., Any], *, beam_job: bool) -> Callable[..., Any]:
    """Wraps a command body taking `beam_args`: applies them to the file systems first.

    A Beam job gets `beam_args` for its pipeline; any other program must know every flag (a typo
    must not pass silently) and does not see them.
    """

    @functools.wraps(main)
    def applied(*args: Any, beam_args: tuple[str, ...], **kwargs: Any) -> Any:
        options = pipeline_options(beam_args)
        if not beam_job and (unknown := filesystems.unknown_flags(beam_args)):
            raise click.UsageError(f"no such option: {unknown[0].partition('=')[0]}")
        filesystems.apply(options, kwargs.values())
        if beam_job:
            return main(*args, beam_args=beam_args, **kwargs)
        return main(*args, **kwargs)

    return applied


def _command(help_text: str | None, main: Callable[..., Any], *, beam_job: bool) -> click.Command:
    guarded = click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)(
        reports_job_errors(_applies_file_system_options(main, beam_job=beam_job))
    )
    return click.command(
        help=help_text,
        context_settings={
            "ignore_unknown_options": True,
            "show_default": True,
            "max_content_width": 100,
        },
    )(guarded)


def beam_job_command(help_text: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Decorator making a click command of a job's `main`.

    The command accepts unknown flags (passed to `main` as `beam_args`, a tuple of strings, for
    `pipeline_options`) and gives them to the file systems before `main` runs, shows defaults
    in `--help`, and reports errors as `reports_job_errors`.
    """
    return lambda main: _command(help_text, main, beam_job=True)


def job_command(help_text: str | None) -> Callable[[Callable[..., Any]], click.Command]:
    """Decorator making a click command of a program that is not a Beam pipeline.

    It takes Beam's flags (the file systems' settings, and whatever a chain passes to every
    stage) and applies them before `main` runs, which does not see them; an unknown flag that is
    not a Beam option is a usage error. Otherwise as `beam_job_command`.
    """
    return lambda main: _command(help_text, main, beam_job=False)


def run_module_main(module_name: str) -> None:
    """Runs `main()` of the module imported by its package name, for `python -m <module>`.

    Beam workers in other processes (multi-processing DirectRunner, Flink, Spark, Dataflow)
    unpickle a job's DoFns by module name, and `python -m`'s `__main__` is not importable there;
    the same module imported as `beam_jobs.<job>` is. The process ends through
    `filesystems.exit_process`, so the exit code survives tensorflow-io's crash at exit.
    """
    try:
        importlib.import_module(module_name).main()
        code = EXIT_OK
    except SystemExit as exit_:  # click's standalone mode always ends here.
        code = exit_.code
        if not isinstance(code, int):
            if code is not None:
                click.echo(code, err=True)
            code = EXIT_ERROR if code is not None else EXIT_OK
    except BaseException:
        if "tensorflow_io" not in sys.modules:
            raise
        logging.exception("%s failed", module_name)
        code = EXIT_ERROR
    filesystems.exit_process(code)
