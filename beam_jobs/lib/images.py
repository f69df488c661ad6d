"""Images: a folder of class sub-folders (PNG, JPEG, GIF, BMP) read into `tf.Example`s.

`--input=<folder>` reads every file one level down, `<folder>/<class>/<file>`, skipping names that
start with a dot (`.DS_Store`); `--input=<pattern>` (`photos/*/*.jpg`) reads the files it matches.
Each image becomes one example, its bytes unchanged:

    image_raw  the file's bytes           label     the name of the folder holding the file
    height     pixels, int64              width     pixels, int64
    depth      channels, int64            filename  the path below the folder, `<class>/<file>`

For a pattern, `filename` is the path below the pattern's last folder without wildcards
(`photos/*/*.jpg` → `cat/001.jpg`). The shape is that of the decoded image (TensorFlow's
`tf.io.decode_image`, which tells the format from the bytes, not the name); an animated GIF's is
its first frame's. A file that does not decode is a rejected row with its path and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, layout, privacy, records, sources
from beam_jobs.lib.records import ColumnType

__all__ = [
    "COLUMN_TYPES",
    "DEPTH",
    "FILENAME",
    "HEIGHT",
    "IMAGES",
    "IMAGE_RAW",
    "LABEL",
    "WIDTH",
    "ImagesToExamples",
    "decode_image",
    "image_example",
    "plan_images",
]

IMAGES = "images"
IMAGE_RAW, LABEL, HEIGHT, WIDTH, DEPTH, FILENAME = (
    "image_raw",
    "label",
    "height",
    "width",
    "depth",
    "filename",
)
COLUMN_TYPES = {
    IMAGE_RAW: ColumnType.BYTES,
    LABEL: ColumnType.BYTES,
    HEIGHT: ColumnType.INT,
    WIDTH: ColumnType.INT,
    DEPTH: ColumnType.INT,
    FILENAME: ColumnType.BYTES,
}
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


def _base_and_glob(pattern: str) -> tuple[str, str]:
    """(the folder `filename` is relative to, the glob of the files) of a folder or pattern."""
    pattern = sources.absolute(pattern)
    if not _GLOB_CHARACTERS.search(pattern):
        folder = pattern.rstrip("/")
        return folder, FileSystems.join(folder, "*", "*")
    fixed = pattern[: _GLOB_CHARACTERS.search(pattern).start()]
    return fixed[: fixed.rfind("/")], pattern


def _no_images_error(pattern: str, folder: str, is_pattern: bool) -> cli.JobError:
    if is_pattern:
        return cli.JobError(f"--input: no file matches {pattern}")
    if not tf.io.gfile.isdir(folder):
        return cli.JobError(f"--input={pattern}: no such folder (images need a folder or pattern)")
    entries = tf.io.gfile.listdir(folder)
    if not any(tf.io.gfile.isdir(FileSystems.join(folder, entry)) for entry in entries):
        return cli.JobError(
            f"--input={pattern} has no class sub-folders: put each class's images in "
            f"{folder}/<class>/"
        )
    return cli.JobError(f"--input={pattern}: its class sub-folders hold no files")


def _list_images(
    pattern: str, split: str | None, start: int
) -> tuple[list[sources.InputFile], int]:
    """The `InputFile`s of one folder or pattern, by path, and their total size in bytes."""
    base, glob = _base_and_glob(pattern)
    is_pattern = bool(_GLOB_CHARACTERS.search(pattern))
    found = [
        metadata
        for metadata in artifacts.list_files(glob)
        if is_pattern or not metadata.path.rsplit("/", 1)[-1].startswith(".")
    ]
    if not found:
        raise _no_images_error(pattern, base, is_pattern)
    files = [
        sources.InputFile(start + i, metadata.path, split, name=metadata.path[len(base) + 1 :])
        for i, metadata in enumerate(found)
    ]
    return files, sum(metadata.size_in_bytes for metadata in found)


def _refuse_other_formats_flags(config: sources.SourceConfig) -> None:
    given = {
        "scrub": bool(config.scrub),
        "span": config.span is not None,
        "version": config.version is not None,
        "compression": config.compression != records.AUTO,
    }
    for flag, is_given in given.items():
        if is_given:
            raise cli.JobError(
                f"--{flag} does not apply to --format={IMAGES}: image features are fixed "
                f"({', '.join(COLUMN_TYPES)})"
            )


def plan_images(config: sources.SourceConfig) -> sources.SourcePlan:
    """Resolves the image files of `--input` (a folder, a pattern, or `train=...,eval=...`).

    Raises:
        cli.JobError: no such folder, no class sub-folders, no files, a flag images do not take.
    """
    _refuse_other_formats_flags(config)
    drop = frozenset(cli.split_list(config.drop_columns))
    unknown = sorted(drop - COLUMN_TYPES.keys())
    if unknown:
        raise cli.JobError(
            f"--drop_columns names {unknown[0]!r}, which is not an image feature "
            f"({', '.join(COLUMN_TYPES)})"
        )
    if config.partition_feature and config.partition_feature not in COLUMN_TYPES.keys() - drop:
        raise cli.JobError(
            f"--partition_feature={config.partition_feature} is not an image feature kept "
            f"({', '.join(sorted(COLUMN_TYPES.keys() - drop))})"
        )
    patterns = sources.parse_input(config.input)
    files: list[sources.InputFile] = []
    total_bytes = 0
    for split, pattern in patterns.items():
        found, size = _list_images(pattern, split, len(files))
        files.extend(found)
        total_bytes += size
    return sources.SourcePlan(
        files=tuple(files),
        input_format=IMAGES,
        num_shards=config.num_shards or sources.shards_for_bytes(total_bytes),
        split_names=() if None in patterns else tuple(name for name in patterns if name),
        policy=privacy.PrivacyPolicy(drop_columns=drop),
    )


def _decode_error(error: Exception) -> str:
    """TensorFlow's reason alone, without its op and device prefix."""
    message = getattr(error, "message", None) or str(error)
    return message.rsplit("}} ", 1)[-1].removesuffix(" [Op:DecodeImage]").strip()


def decode_image(data: bytes) -> tuple[int, int, int]:
    """(height, width, depth) of an encoded PNG, JPEG, GIF (its first frame) or BMP.

    Raises:
        ValueError: the bytes are not an image TensorFlow can decode; the message says why.
    """
    try:
        # Decoded whole, not just its header: a truncated file must not pass.
        shape = tf.io.decode_image(data, expand_animations=True).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise ValueError(_decode_error(error)) from None
    height, width, depth = shape[-3:]  # An animated GIF is [frames, height, width, 3].
    return int(height), int(width), int(depth)


def image_example(
    data: bytes, label: str, filename: str, drop: frozenset[str] = frozenset()
) -> bytes:
    """The serialized `tf.Example` of one image (features sorted, as every format's).

    Raises:
        ValueError: the bytes do not decode (see `decode_image`).
    """
    height, width, depth = decode_image(data)
    values = {
        IMAGE_RAW: data,
        LABEL: label.encode("utf-8"),
        HEIGHT: height,
        WIDTH: width,
        DEPTH: depth,
        FILENAME: filename.encode("utf-8"),
    }
    kept = {name: value for name, value in values.items() if name not in drop}
    example = records.encode_example(kept, COLUMN_TYPES)
    return example.SerializeToString(deterministic=True)


def _label_of(path: str) -> str:
    """The name of the folder holding the file."""
    return path.rstrip("/").rsplit("/", 2)[-2]


class _ImageToExample(beam.DoFn):
    """An `InputFile` → (sort key, serialized example), or (sort key, rejected line) tagged
    REJECTED; the sort key is (input file index, 0)."""

    REJECTED = "rejected"

    def __init__(self, stage: str, drop: frozenset[str]) -> None:
        self._drop = drop
        self._read = beam.metrics.Metrics.counter(stage, layout.ROWS_READ)
        self._rejected = beam.metrics.Metrics.counter(stage, layout.ROWS_REJECTED)

    def process(self, item: sources.InputFile) -> Iterator[Any]:
        self._read.inc()
        sort_key = (item.index, 0)
        try:
            with FileSystems.open(
                item.path, compression_type=CompressionTypes.UNCOMPRESSED
            ) as handle:
                data = handle.read()
            yield sort_key, image_example(data, _label_of(item.path), item.name or "", self._drop)
        except (OSError, ValueError) as error:
            self._rejected.inc()
            line = sources.rejected_line(item.path, 0, f"not a readable image: {error}", None)
            yield beam.pvalue.TaggedOutput(self.REJECTED, (sort_key, line))


class ImagesToExamples(beam.PTransform[beam.pvalue.PBegin, sources.ConvertedRows]):
    """Image files → serialized `tf.Example`s and rejected files, as `RawRowsToExamples` gives
    rows: the same outputs, so ingest splits, shards and counts them alike."""

    def __init__(
        self,
        files: tuple[sources.InputFile, ...],
        *,
        stage: str,
        policy: privacy.PrivacyPolicy | None = None,
    ) -> None:
        super().__init__()
        self._files = files
        self._stage = stage
        self._drop = (policy or privacy.PrivacyPolicy()).drop_columns

    def expand(self, pipeline: beam.pvalue.PBegin) -> sources.ConvertedRows:
        files = (
            pipeline | "ListImages" >> beam.Create(self._files) | "SpreadImages" >> beam.Reshuffle()
        )
        converted = files | "DecodeImages" >> beam.ParDo(
            _ImageToExample(self._stage, self._drop)
        ).with_outputs(_ImageToExample.REJECTED, main="examples")
        rows_read = files | "CountImagesRead" >> beam.combiners.Count.Globally()
        types = {name: kind for name, kind in COLUMN_TYPES.items() if name not in self._drop}
        return sources.ConvertedRows(
            rows_read=rows_read,
            column_types=pipeline | "ImageFeatureTypes" >> beam.Create([types]),
            examples=converted.examples,
            rejected=converted[_ImageToExample.REJECTED],
            scrubbed=pipeline
            | "NothingScrubbed" >> beam.Create([]).with_output_types(tuple[str, int]),
        )
