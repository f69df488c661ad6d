"""Object-store settings for every program: Beam's file systems and TensorFlow's.

Beam hands its options to its file systems only inside `beam.Pipeline()`; a job lists its inputs,
reads manifests and stages its output before that. `apply` gives the options of the command line
(`--s3_endpoint_url=...`, `--s3_region_name=...`, GCP options) to `FileSystems` first, for Beam
jobs and for the programs that are not pipelines (training, push, model cards) alike.

TensorFlow 2.16 has no `s3://` file system: tensorflow-io (`pip install .[s3]`) provides it, set
up by environment variables only. When a command names an `s3://` path, `apply` sets them from
the same flags (never over what the user set) and imports tensorflow_io, whose S3 plugin aborts
the interpreter at exit (tensorflow/io#2039); `exit_process` then ends the process with the
job's own exit code before that can happen.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

__all__ = [
    "SECRET_FLAGS",
    "apply",
    "beam_flags",
    "exit_process",
    "names_s3",
    "unknown_flags",
]

S3_SCHEME = "s3://"
# Flags whose values are credentials: never recorded (run keys, run status, manifests).
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")
_TENSORFLOW_IO = "tensorflow_io"
_BEAM_OPTIONS_LOGGER = "apache_beam.options.pipeline_options"


def unknown_flags(flags: Sequence[str]) -> list[str]:
    """The flags among `flags` that no Beam options class defines (typos, another job's flags)."""
    options = PipelineOptions(list(flags))
    # Beam keeps flags it does not know only when asked to; the difference names them. Its
    # warnings about them would repeat what the caller reports.
    beam_logger = logging.getLogger(_BEAM_OPTIONS_LOGGER)
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)
    try:
        known = options.get_all_options(drop_default=False)
        every = options.get_all_options(drop_default=False, retain_unknown_options=True)
    finally:
        beam_logger.setLevel(level)
    unknown = set(every) - set(known)
    return [flag for flag in flags if flag.lstrip("-").partition("=")[0] in unknown]


def beam_flags(arguments: Sequence[str]) -> list[str]:
    """The `--flag=value` arguments of a command that are Beam options (a stage's own flags and
    anything that is not a flag left out)."""
    flags = [arg for arg in arguments if arg.startswith("--") and "=" in arg]
    unknown = set(unknown_flags(flags))
    return [flag for flag in flags if flag not in unknown]


def names_s3(values: Iterable[Any]) -> bool:
    """Whether any of a command's values (flag values, forwarded flags) holds an s3:// path."""
    return any(S3_SCHEME in str(value) for value in values if value is not None)


def _tensorflow_s3_environment(options: S3Options) -> dict[str, str]:
    """tensorflow-io's S3 settings (environment variables) for Beam's S3 options."""
    settings = {
        "S3_ENDPOINT": options.s3_endpoint_url,
        "AWS_REGION": options.s3_region_name,
        "AWS_ACCESS_KEY_ID": options.s3_access_key_id,
        "AWS_SECRET_ACCESS_KEY": options.s3_secret_access_key,
        "AWS_SESSION_TOKEN": options.s3_session_token,
    }
    if options.s3_disable_ssl:
        settings["S3_USE_HTTPS"] = "0"
    if options.s3_verify is not None and str(options.s3_verify).lower() in ("false", "0"):
        settings["S3_VERIFY_SSL"] = "0"
    return {name: str(value) for name, value in settings.items() if value}


def _load_tensorflow_s3(options: PipelineOptions) -> None:
    for name, value in _tensorflow_s3_environment(options.view_as(S3Options)).items():
        os.environ.setdefault(name, value)  # What the user set wins.
    try:
        import tensorflow_io  # noqa: F401  (registers TensorFlow's s3:// file system)
    except ImportError:
        logging.warning(
            "an s3:// path, but tensorflow-io is not installed (pip install .[s3]): "
            "TensorFlow's reads and writes on s3:// will fail"
        )


def _write_empty_part_for_empty_objects() -> None:
    """Beam's S3 writer completes a multipart upload with no part for an empty file, which S3
    refuses (MalformedXML, apache/beam#21369, open): upload one empty part then."""
    from apache_beam.io.aws import s3io

    finish = s3io.S3Uploader.finish
    if getattr(finish, "_writes_empty_part", False):
        return

    def finish_with_a_part(uploader: Any) -> None:
        if not uploader.parts and not uploader.buffer:
            uploader._write_to_s3(b"")
        finish(uploader)

    finish_with_a_part._writes_empty_part = True
    s3io.S3Uploader.finish = finish_with_a_part


def apply(options: PipelineOptions, values: Iterable[Any] = ()) -> None:
    """Gives a command's options to Beam's file systems, and to TensorFlow's if it names s3://.

    Args:
        options: the Beam options of the command line.
        values: every value of the command (its flags' values), to tell whether one is on s3://.
    """
    FileSystems.set_options(options)
    _write_empty_part_for_empty_objects()
    flags = options.get_all_options(drop_default=True).values()
    if names_s3([*values, *flags]):
        _load_tensorflow_s3(options)


def exit_process(code: int) -> None:
    """Ends the process with `code`; skips native teardown when tensorflow_io was loaded.

    tensorflow-io 0.37.1's S3 plugin aborts in its destructors at interpreter exit (status 134,
    tensorflow/io#2039), which would replace 0/3/4 by a crash: run Python's own exit handlers and
    flush every stream, then leave without the native teardown.
    """
    if _TENSORFLOW_IO not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
