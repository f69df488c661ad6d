"""Tests of ingest's image folders: decoding, features, splits, rejects, and TFDV on the result."""

from __future__ import annotations

import io
import json
import pathlib

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from click.testing import CliRunner
from PIL import Image

from beam_jobs import ingest, statistics, validate
from beam_jobs.lib import artifacts, cli, images, layout, records
from tests.conftest import direct_options


def png(height: int, width: int, depth: int, seed: int = 0) -> bytes:
    pixels = tf.random.stateless_uniform(
        [height, width, depth], seed=[seed, 1], maxval=256, dtype=tf.int32
    )
    return tf.io.encode_png(tf.cast(pixels, tf.uint8)).numpy()


def jpeg(height: int, width: int, depth: int, seed: int = 0) -> bytes:
    pixels = tf.fill([height, width, depth], tf.constant(seed * 17 % 256, tf.uint8))
    return tf.io.encode_jpeg(pixels).numpy()


def gif(height: int, width: int, frames: int) -> bytes:
    """An animated GIF of `frames` frames (palette images)."""
    pictures = [Image.new("P", (width, height), color=index) for index in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:])
    return buffer.getvalue()


def bmp(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color=(10, 20, 30)).save(buffer, format="BMP")
    return buffer.getvalue()


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_photos(root: pathlib.Path) -> dict[str, tuple[str, int, int, int]]:
    """Two classes in every format, a corrupt PNG, a text file and a hidden file.

    Returns:
        {filename below root: (label, height, width, depth)} of the images that decode.
    """
    good: dict[str, tuple[bytes, int, int, int]] = {}
    for index in range(6):
        good[f"cat/cat{index}.png"] = (png(4 + index, 5, 3, index), 4 + index, 5, 3)
        good[f"dog/dog{index}.jpg"] = (jpeg(6, 3 + index, 1, index), 6, 3 + index, 1)
    good["cat/rgba.png"] = (png(2, 2, 4), 2, 2, 4)
    good["dog/animated.gif"] = (gif(7, 9, frames=3), 7, 9, 3)
    good["dog/picture.bmp"] = (bmp(3, 8), 3, 8, 3)
    for name, (data, *_) in good.items():
        write(root / name, data)
    write(root / "cat" / "broken.png", png(8, 8, 3)[:40])  # Header intact, data cut off.
    write(root / "dog" / "notes.txt", b"not an image")
    write(root / "dog" / ".DS_Store", b"\x00\x01")  # Hidden: not read.
    return {name: (name.split("/")[0], *shape) for name, (_, *shape) in good.items()}


def read_examples(directory: pathlib.Path) -> list[tf.train.Example]:
    return [
        tf.train.Example.FromString(record)
        for path in sorted(directory.glob("data-*.tfrecord.gz"))
        for record in artifacts.read_tfrecords(str(path))
    ]


def run_ingest(input_pattern: str, output_dir: pathlib.Path, **kwargs) -> artifacts.Manifest:
    config = ingest.IngestConfig(
        input=input_pattern,
        output_dir=str(output_dir),
        input_format=images.IMAGES,
        max_rejected_fraction=0.2,
        **kwargs,
    )
    return ingest.run(config, direct_options())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    root = tmp_path_factory.mktemp("images") / "photos"
    return root, make_photos(root)


@pytest.fixture(scope="module")
def ingested(photos, tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("ingest_images") / "out"
    run_ingest(str(photos[0]), output_dir)
    return output_dir


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        (png(3, 4, 1), (3, 4, 1)),
        (png(3, 4, 4), (3, 4, 4)),
        (jpeg(5, 2, 3), (5, 2, 3)),
        (gif(6, 7, frames=4), (6, 7, 3)),
        (bmp(2, 9), (2, 9, 3)),
    ],
    ids=["png-gray", "png-rgba", "jpeg", "gif-first-frame", "bmp"],
)
def test_decode_image_gives_height_width_depth(data, shape):
    assert images.decode_image(data) == shape


@pytest.mark.parametrize(
    "data",
    [b"", b"plain text", jpeg(9, 9, 3)[:60], png(9, 9, 3)[:-20]],
    ids=["empty", "text", "truncated-jpeg", "truncated-png"],
)
def test_what_does_not_decode_raises_a_reason(data):
    with pytest.raises(ValueError, match=r"\w"):
        images.decode_image(data)


def test_every_image_is_one_example_with_its_bytes_and_shape(ingested, photos):
    root, expected = photos
    manifest = artifacts.read_manifest(str(ingested))
    examples = {}
    for split in ("train", "eval"):
        split_examples = read_examples(ingested / split)
        assert len(split_examples) == manifest.counts[layout.ROWS_WRITTEN][split] > 0
        examples.update(
            {e.features.feature["filename"].bytes_list.value[0]: e for e in split_examples}
        )
    assert sorted(name.decode() for name in examples) == sorted(expected)
    for name, (label, height, width, depth) in expected.items():
        values = {
            key: records._feature_values(feature)
            for key, feature in examples[name.encode()].features.feature.items()
        }
        assert values == {
            "image_raw": [(root / name).read_bytes()],
            "label": [label.encode()],
            "filename": [name.encode()],
            "height": [height],
            "width": [width],
            "depth": [depth],
        }
    assert manifest.counts[layout.ROWS_READ] == len(expected) + 2  # .DS_Store is not read.
    assert manifest.counts[layout.ROWS_REJECTED] == 2
    assert manifest.extra["feature_types"] == {
        "depth": "INT",
        "filename": "BYTES",
        "height": "INT",
        "image_raw": "BYTES",
        "label": "BYTES",
        "width": "INT",
    }


def test_files_that_do_not_decode_are_rejected_with_path_and_reason(ingested, photos):
    root, _ = photos
    lines = [
        json.loads(line)
        for path in sorted((ingested / layout.REJECTED_DIR).glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert [line["file"] for line in lines] == [
        str(root / "cat" / "broken.png"),
        str(root / "dog" / "notes.txt"),
    ]
    assert "PNG" in lines[0]["reason"]
    assert "Unknown image file format" in lines[1]["reason"]


def test_a_rerun_writes_the_same_bytes(ingested, photos, tmp_path):
    again = tmp_path / "again"
    run_ingest(str(photos[0]), again, num_shards=2)
    for split in ("train", "eval", layout.REJECTED_DIR):
        files = sorted(p.name for p in (again / split).iterdir())
        assert files, split
    second = tmp_path / "second"
    run_ingest(str(photos[0]), second, num_shards=2)
    for path in sorted(again.rglob("*-of-*")):
        assert path.read_bytes() == (second / path.relative_to(again)).read_bytes(), path
    together = {e.SerializeToString() for s in ("train", "eval") for e in read_examples(again / s)}
    assert together == {
        e.SerializeToString() for s in ("train", "eval") for e in read_examples(ingested / s)
    }


def test_a_pattern_reads_what_it_matches_labelled_by_the_parent_folder(photos, tmp_path):
    root, expected = photos
    manifest = run_ingest(f"{root}/*/*.png", tmp_path / "out", splits="train:1")
    assert manifest.counts[layout.ROWS_READ] == 8  # 7 PNGs and the broken one.
    examples = read_examples(tmp_path / "out" / "train")
    assert sorted(
        (
            e.features.feature["filename"].bytes_list.value[0].decode(),
            e.features.feature["label"].bytes_list.value[0].decode(),
        )
        for e in examples
    ) == sorted((name, label) for name, (label, *_) in expected.items() if name.endswith(".png"))


def test_presplit_folders_and_dropped_features(photos, tmp_path):
    root, _ = photos
    manifest = run_ingest(
        f"train={root},eval={root}/dog/*.jpg", tmp_path / "out", drop_columns="filename"
    )
    assert manifest.counts[layout.ROWS_WRITTEN] == {"train": 15, "eval": 6}
    example = read_examples(tmp_path / "out" / "eval")[0]
    assert sorted(example.features.feature) == ["depth", "height", "image_raw", "label", "width"]


def test_statistics_and_validate_run_on_the_result(ingested, tmp_path):
    stats_dir, validate_dir = tmp_path / "statistics", tmp_path / "validate"
    statistics.run(
        statistics.StatisticsConfig(examples_dir=str(ingested), output_dir=str(stats_dir)),
        direct_options(),
    )
    train = tfdv.load_stats_binary(str(stats_dir / "train" / layout.STATS_FILE))
    features = {f.path.step[0]: f for f in train.datasets[0].features}
    assert sorted(features) == ["depth", "filename", "height", "image_raw", "label", "width"]
    schema = tfdv.infer_schema(train)
    assert not tfdv.get_feature(schema, "image_raw").HasField("domain")
    assert set(tfdv.get_domain(schema, "label").value) == {"cat", "dog"}
    # Train's file names are no domain of eval's: the file name is an identifier.
    tfdv.get_feature(schema, "filename").ClearField("domain_info")
    schema_path = tmp_path / "schema.pbtxt"
    tfdv.write_schema_text(schema, str(schema_path))
    config = validate.ValidateConfig(
        statistics_dir=str(stats_dir), schema=str(schema_path), output_dir=str(validate_dir)
    )
    manifest = validate.run(config)
    assert manifest.counts["anomalies"] == {"train": 0, "eval": 0}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: str(d / "missing"), "no such folder"),
        (lambda d: str(write(d / "flat" / "a.png", png(2, 2, 3)).parent), "no class sub-folders"),
        (lambda d: str((d / "empty" / "cat").mkdir(parents=True) or d / "empty"), "hold no files"),
        (lambda d: str(d / "*" / "*.png"), "no file matches"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, setup, message):
    result = CliRunner().invoke(
        ingest.main,
        ["--format=images", f"--input={setup(tmp_path)}", f"--output_dir={tmp_path / 'out'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--schema=s.pbtxt", "--schema does not apply"),
        ("--scrub=label:email", "--scrub does not apply"),
        ("--drop_columns=pixels", "not an image feature"),
        ("--partition_feature=pixels", "not an image feature"),
    ],
)
def test_flags_of_other_formats_are_refused(photos, tmp_path, flag, message):
    result = CliRunner().invoke(
        ingest.main,
        ["--format=images", f"--input={photos[0]}", f"--output_dir={tmp_path / 'out'}", flag],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert message in result.output


def test_partition_on_the_bytes_keeps_copies_of_a_picture_in_one_split(tmp_path):
    root = tmp_path / "photos"
    for index in range(8):
        picture = png(3, 3, 3, seed=index)
        write(root / "cat" / f"{index}.png", picture)
        write(root / "dog" / f"copy{index}.png", picture)
    run_ingest(str(root), tmp_path / "out", partition_feature="image_raw")
    split_of = {}
    for split in ("train", "eval"):
        for example in read_examples(tmp_path / "out" / split):
            picture = example.features.feature["image_raw"].bytes_list.value[0]
            split_of.setdefault(picture, set()).add(split)
    assert len(split_of) == 8
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {split for splits in split_of.values() for split in splits} == {"train", "eval"}
