"""Run page: one static HTML page of a pipeline run, every stage at a glance, its reports linked.

    python -m beam_jobs.run_page --pipeline_root=<dir> [--serving_dir=<dir>] [--output=<file>]

Writes `<pipeline_root>/index.html` (or `--output`): per stage (ingest, statistics, validate,
transform, train, evaluate, push, and tune, infer, feedback and model cards where the root has
them) its status, start and end time, the counts of its manifest (rows read, written and
rejected, anomalies per split, the blessing and the thresholds that decided it, the pushed
version) and relative links to its reports (statistics per split, validation, evaluation, model
card). Plain HTML and inline styles, no scripts: it opens from a file, offline.

A stage's status comes from `<pipeline_root>/run_status/`, which `scripts/run_pipeline.sh` writes:
`run.json` for the run (`started_at`, `finished_at`, `exit_code`, `serving_dir`) and one
`<stage>.json` per stage it reached (`status`: running, ran, skipped or failed; `exit_code`,
`started_at`, `finished_at`, `command`), each written aside and renamed into place. A stage the run
did not reach is "not run", even if an earlier run's output is still there. For a root without
`run_status/` (stages run by hand), a stage with a manifest ran, one with only a
`<stage>.failed/FAILED.json` failed.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import click
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, layout, reports

__all__ = [
    "CORE_STAGES",
    "PAGE_FILE",
    "RUN_STATUS_DIR",
    "RunPageConfig",
    "StageRow",
    "main",
    "read_stage_rows",
    "run",
    "run_page_html",
]

PAGE_FILE = "index.html"
RUN_STATUS_DIR = "run_status"
RUN_FILE = "run.json"
# Always on the page, in this order; the optional stages appear where the root holds them.
CORE_STAGES = ("ingest", "statistics", "validate", "transform", "train", "evaluate", "push")
STAGE_ORDER = (
    "ingest",
    "statistics",
    "validate",
    "transform",
    "tune",
    "train",
    "evaluate",
    "push",
    "infer",
    "feedback",
    "model_card",
)
RAN, SKIPPED, FAILED, RUNNING, NOT_RUN = "ran", "skipped", "failed", "running", "not run"
_STATUS_CLASS = {RAN: "ok", SKIPPED: "ok", FAILED: "bad", RUNNING: "bad", NOT_RUN: ""}
# The report each stage writes: (label, path in its directory), `{split}` per split it has.
_REPORTS = {
    "statistics": ("statistics: {split}", "{split}/stats.html"),
    "validate": ("validation report", "report.html"),
    "evaluate": ("evaluation report", "report.html"),
    "tune": ("best hparams", "best_hparams.json"),
}
# Counts of a stage the page shows, where not all of them.
_COUNTS_SHOWN = {
    "statistics": ("examples",),
    "train": ("steps", "train_examples", "batch_size", "replicas"),
    "tune": ("trials", "trials_completed", "steps_per_trial"),
}
_CARD_TITLE = "<title>Model card: "
_CARD_HEAD_BYTES = 4096
_DEFAULT_SERVING_DIR = "serving"


@dataclasses.dataclass(frozen=True)
class RunPageConfig:
    """The run page's parameters."""

    pipeline_root: str
    serving_dir: str | None = None
    output: str | None = None


@dataclasses.dataclass(frozen=True)
class StageRow:
    """One stage of the run as the page shows it.

    Attributes:
        name: the stage's directory under the root (its stage name for the chained stages).
        status: ran, skipped, failed, running or not run.
        exit_code: the stage's exit code where the run recorded one.
        started_at: when the stage (or the output shown) started; empty if unknown.
        finished_at: when it finished; empty if unknown.
        facts: lines of counts and verdicts, read from its manifest and files.
        links: (label, path relative to the root) of its reports.
    """

    name: str
    status: str
    exit_code: int | None = None
    started_at: str = ""
    finished_at: str = ""
    facts: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()


def _join(root: str, *parts: str) -> str:
    return FileSystems.join(root, *parts)


def _read_json_or_none(path: str) -> Any:
    """A JSON file's value, or None if it is absent or not JSON (a page never fails on one)."""
    if not FileSystems.exists(path):
        return None
    try:
        return artifacts.read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        logging.warning("run_page: %s is not readable JSON; ignored", path)
        return None


def _manifest(stage_dir: str) -> dict[str, Any] | None:
    manifest = _read_json_or_none(_join(stage_dir, artifacts.MANIFEST_FILE))
    return manifest if isinstance(manifest, dict) else None


def _per_split(value: Any, splits: Sequence[str] = ()) -> str:
    """`{train: 2, eval: 1}` as `train 2, eval 1` (in the manifest's split order); a number too."""
    if isinstance(value, Mapping):
        order = {split: index for index, split in enumerate(splits)}
        keys = sorted(value, key=lambda key: (order.get(key, len(order)), key))
        return ", ".join(f"{key} {_number(value[key])}" for key in keys)
    return _number(value)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count_lines(stage: str, manifest: Mapping[str, Any]) -> list[str]:
    """A manifest's counts, one line each: numbers, or numbers per split (others left out)."""
    counts = manifest.get("counts") or {}
    shown = _COUNTS_SHOWN.get(stage, tuple(counts))
    lines = []
    for key in shown:
        value = counts.get(key)
        scalar = isinstance(value, int | float) and not isinstance(value, bool)
        split_counts = isinstance(value, Mapping) and all(
            isinstance(item, int | float) for item in value.values()
        )
        if scalar or (split_counts and value):
            lines.append(
                f"{key.replace('_', ' ')}: {_per_split(value, manifest.get('splits') or ())}"
            )
    return lines


def _blessing_lines(stage_dir: str) -> list[str]:
    """Evaluate's verdict and the thresholds that decided it (the failed ones if not blessed)."""
    blessing = _read_json_or_none(_join(stage_dir, layout.BLESSING_JSON))
    if not isinstance(blessing, dict):
        return []
    blessed = bool(blessing.get("blessed"))
    thresholds = [t for t in blessing.get("thresholds") or [] if isinstance(t, dict)]
    deciding = thresholds if blessed else [t for t in thresholds if not t.get("passed")]
    lines = [layout.BLESSED_FILE if blessed else layout.NOT_BLESSED_FILE]
    for threshold in deciding:
        value = threshold.get("value")
        shown = _number(value) if value is not None else "missing"
        verdict = "passed" if threshold.get("passed") else "failed"
        lines.append(f"{threshold.get('name', threshold.get('metric', '?'))}: {shown} ({verdict})")
    return lines


def _stage_facts(stage: str, stage_dir: str, manifest: Mapping[str, Any] | None) -> list[str]:
    """What the page says about one stage's output beyond its counts."""
    facts = _count_lines(stage, manifest) if manifest else []
    if not manifest:
        return facts
    if stage == "validate" and manifest.get("anomalous"):
        facts.append(f"anomalous splits: {', '.join(manifest['anomalous'])}")
    elif stage == "train":
        metrics = (manifest.get("metrics") or {}).get("eval") or {}
        if metrics:
            facts.append("eval " + ", ".join(f"{k} {_number(v)}" for k, v in metrics.items()))
        if manifest.get("export_path"):
            facts.append(f"export: {manifest['export_path']}")
    elif stage == "evaluate":
        facts.extend(_blessing_lines(stage_dir))
    elif stage == "tune":
        best = manifest.get("best") or {}
        objective = (manifest.get("objective") or {}).get("name", "objective")
        facts.append(f"best trial {best.get('trial_id')}: {objective} {_number(best.get('score'))}")
        facts.append(f"best hparams: {json.dumps(best.get('hparams'), sort_keys=True)}")
    return facts


def _stage_links(
    stage: str, name: str, root: str, manifest: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """(label, path relative to the root) of each report the stage's directory holds."""
    if stage not in _REPORTS:
        return []
    label, template = _REPORTS[stage]
    splits = ((manifest or {}).get("splits") or []) if "{split}" in template else [""]
    links = [(label.format(split=s), f"{name}/{template.format(split=s)}") for s in splits]
    return [(text, path) for text, path in links if FileSystems.exists(_join(root, path))]


def _failure_reason(root: str, name: str, status: Mapping[str, Any] | None) -> list[str]:
    """The reason `<stage>.failed/FAILED.json` gives, if it is from this failure."""
    failed = _read_json_or_none(_join(root, name + artifacts.FAILED_SUFFIX, artifacts.FAILED_FILE))
    if not isinstance(failed, dict):
        return []
    if status and str(failed.get("failed_at", "")) < str(status.get("started_at", "")):
        return []  # An older failure's leftovers.
    return [f"reason: {failed.get('reason', '?')}"]


def _normalized(path: str) -> str:
    if FileSystems.get_scheme(path) is None:
        return os.path.realpath(path)
    return path.rstrip("/")


def _pushed_version(root: str, serving_dir: str) -> dict[str, Any] | None:
    """The provenance of the newest version under `serving_dir` blessed by `<root>/evaluate`."""
    evaluation_dir = _normalized(_join(root, "evaluate"))
    for version in reversed(artifacts.serving_versions(serving_dir)):
        record = _read_json_or_none(_join(serving_dir, str(version), layout.PROVENANCE_FILE))
        chain = (record or {}).get("evaluation") or [{}]
        if _normalized(str(chain[0].get("path", ""))) == evaluation_dir:
            return record
    return None


def _push_facts(root: str, serving_dir: str) -> tuple[list[str], str]:
    """Lines about what push served from this root, and when it pushed it."""
    record = _pushed_version(root, serving_dir)
    newest = artifacts.serving_versions(serving_dir)
    if record is None:
        return [f"no version under {serving_dir} was pushed from this run's evaluation"], ""
    facts = [f"pushed version {record.get('version')} to {serving_dir}"]
    if newest and newest[-1] != record.get("version"):
        facts.append(f"serving now: version {newest[-1]} (newer)")
    return facts, str(record.get("pushed_at", ""))


def _status_files(root: str) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """`run_status/run.json` (None without it) and every stage's status, by stage name."""
    status_dir = _join(root, RUN_STATUS_DIR)
    run_record = _read_json_or_none(_join(status_dir, RUN_FILE))
    statuses = {}
    for metadata in artifacts.list_files(_join(status_dir, "*.json")):
        name = metadata.path.rsplit("/", 1)[-1].removesuffix(".json")
        record = _read_json_or_none(metadata.path)
        if name != RUN_FILE.removesuffix(".json") and isinstance(record, dict):
            statuses[name] = record
    return (run_record if isinstance(run_record, dict) else None), statuses


def _is_current(manifest: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """Whether a manifest was written by the run a status describes (not left by an earlier one)."""
    return bool(manifest) and str(manifest.get("finished_at", "")) >= str(status["started_at"])


def _recorded_row(
    name: str, stage: str, root: str, status: Mapping[str, Any], manifest: dict[str, Any] | None
) -> StageRow:
    """A stage the run script recorded: its status, and what its output says if it is this
    run's (or, skipped, the earlier run's it kept); a failed stage's leftovers are not shown."""
    state = str(status.get("status", RUNNING))
    code = status.get("exit_code")
    own = manifest if state in (RAN, SKIPPED) or _is_current(manifest, status) else None
    source = own or status
    facts = _stage_facts(stage, _join(root, name), own)
    if state == SKIPPED:
        facts.insert(0, "up to date: skipped by --resume, output of an earlier run")
    if state == FAILED:
        facts += _failure_reason(root, name, status)
    return StageRow(
        name,
        state,
        exit_code=code if isinstance(code, int) else None,
        started_at=str(source.get("started_at") or ""),
        finished_at=str(source.get("finished_at") or ""),
        facts=tuple(facts),
        links=tuple(_stage_links(stage, name, root, own)) if own else (),
    )


def _unrecorded_row(
    name: str, stage: str, root: str, manifest: dict[str, Any] | None, run_recorded: bool
) -> StageRow:
    """A stage without a status: not reached by a recorded run, or run by hand."""
    if run_recorded:
        note = "not reached by this run"
        if manifest:
            note += f"; an earlier run's output (finished {manifest.get('finished_at')}) is there"
        return StageRow(name, NOT_RUN, facts=(note,))
    if manifest:
        return StageRow(
            name,
            RAN,
            started_at=manifest.get("started_at", ""),
            finished_at=manifest.get("finished_at", ""),
            facts=tuple(_stage_facts(stage, _join(root, name), manifest)),
            links=tuple(_stage_links(stage, name, root, manifest)),
        )
    reason = _failure_reason(root, name, None)
    return StageRow(name, FAILED if reason else NOT_RUN, facts=tuple(reason))


def _push_row(root: str, serving_dir: str, status: Mapping[str, Any] | None, run_recorded: bool):
    """Push writes no manifest: what it served is found by provenance under the serving dir."""
    facts, pushed_at = _push_facts(root, serving_dir)
    if status is None and run_recorded:
        return StageRow("push", NOT_RUN, facts=("not reached by this run",))
    if status is None:
        found = pushed_at != ""
        return StageRow(
            "push",
            RAN if found else NOT_RUN,
            finished_at=pushed_at,
            facts=tuple(facts) if found else (),
        )
    row = _recorded_row("push", "push", root, status, None)
    if row.status in (RAN, SKIPPED):
        return dataclasses.replace(row, facts=row.facts + tuple(facts))
    return row


def _stage_dirs(root: str) -> dict[str, str]:
    """Directories directly under the root holding a stage's manifest, by name: their stage."""
    found = {}
    for metadata in artifacts.list_files(_join(root, "*", artifacts.MANIFEST_FILE)):
        name = metadata.path[: -len(artifacts.MANIFEST_FILE) - 1].rsplit("/", 1)[-1]
        manifest = _read_json_or_none(metadata.path)
        if isinstance(manifest, dict) and manifest.get("stage"):
            found[name] = str(manifest["stage"])
    return found


def _model_cards(root: str) -> list[StageRow]:
    """A row per model card page directly under the root or one folder down."""
    rows = []
    for pattern in ("*.html", "*/*.html"):
        for metadata in artifacts.list_files(_join(root, pattern)):
            with FileSystems.open(
                metadata.path, compression_type=CompressionTypes.UNCOMPRESSED
            ) as f:
                head = f.read(_CARD_HEAD_BYTES).decode("utf-8", "replace")
            if _CARD_TITLE not in head:
                continue
            relative = metadata.path[len(root.rstrip("/")) + 1 :]
            written = datetime.datetime.fromtimestamp(
                metadata.last_updated_in_seconds, datetime.UTC
            )
            rows.append(
                StageRow(
                    "model_card",
                    RAN,
                    finished_at=written.isoformat(timespec="seconds"),
                    links=(("model card", relative),),
                )
            )
    return rows


def _order(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def read_stage_rows(root: str, serving_dir: str | None = None) -> list[StageRow]:
    """Every stage of the run under `root`, in pipeline order, as the page shows them.

    Args:
        root: the pipeline root.
        serving_dir: where push serves [default: run.json's, else `<root>/serving`].
    """
    run_record, statuses = _status_files(root)
    run_recorded = run_record is not None
    serving_dir = (
        serving_dir or (run_record or {}).get("serving_dir") or _join(root, _DEFAULT_SERVING_DIR)
    )
    stages = {name: name for name in CORE_STAGES}
    stages.update(_stage_dirs(root))
    stages.update({name: name for name in statuses if name not in stages})
    rows = []
    for name in sorted(stages, key=lambda name: (_order(stages[name]), name)):
        if name == "push":
            rows.append(_push_row(root, serving_dir, statuses.get(name), run_recorded))
            continue
        manifest = _manifest(_join(root, name))
        if name in statuses:
            rows.append(_recorded_row(name, stages[name], root, statuses[name], manifest))
        else:
            rows.append(_unrecorded_row(name, stages[name], root, manifest, run_recorded))
    return rows + _model_cards(root)


def _duration(started_at: str, finished_at: str) -> str:
    try:
        seconds = (
            datetime.datetime.fromisoformat(finished_at)
            - datetime.datetime.fromisoformat(started_at)
        ).total_seconds()
    except (TypeError, ValueError):
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _time(text: str) -> str:
    """An ISO 8601 time as `2024-05-01 12:00:00 UTC`; anything else as it is."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return text
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_cell(row: StageRow) -> str:
    text = row.status
    if row.status == FAILED and row.exit_code is not None:
        text = f"failed (exit {row.exit_code})"
    elif row.status == SKIPPED:
        text = "skipped (resume)"
    return f'<td class="{_STATUS_CLASS.get(row.status, "")}">{html.escape(text)}</td>'


def _row_html(row: StageRow) -> str:
    facts = "<br>".join(html.escape(fact) for fact in row.facts)
    links = "<br>".join(
        f'<a href="{html.escape(path, quote=True)}">{html.escape(label)}</a>'
        for label, path in row.links
    )
    cells = [
        f"<td>{html.escape(row.name)}</td>",
        _status_cell(row),
        f"<td>{html.escape(_time(row.started_at))}</td>",
        f"<td>{html.escape(_time(row.finished_at))}</td>",
        f'<td class="num">{html.escape(_duration(row.started_at, row.finished_at))}</td>',
        f"<td>{facts}</td>",
        f"<td>{links}</td>",
    ]
    return f'<tr id="stage-{html.escape(row.name, quote=True)}">{"".join(cells)}</tr>'


def _summary(run_record: Mapping[str, Any] | None, rows: Sequence[StageRow]) -> str:
    """One line on the run: how it ended, and when."""
    failed = [row for row in rows if row.status in (FAILED, RUNNING)]
    code = (run_record or {}).get("exit_code")
    if failed:
        code = failed[0].exit_code if failed[0].exit_code is not None else code
        verdict = f"stopped at {failed[0].name}" + (f" (exit {code})" if code is not None else "")
    elif code:
        verdict = f"stopped (exit {code})"
    elif run_record and run_record.get("finished_at") is None:
        verdict = "running"
    else:
        verdict = "finished"
    css = "ok" if verdict == "finished" else "bad"
    when = ""
    if run_record:
        when = f" · started {_time(str(run_record.get('started_at', '?')))}"
        if run_record.get("finished_at"):
            when += f", ended {_time(str(run_record['finished_at']))}"
    return f'<p><strong class="{css}">{html.escape(verdict)}</strong>{html.escape(when)}</p>'


def run_page_html(root: str, rows: Sequence[StageRow], run_record: Mapping[str, Any] | None) -> str:
    """The page: a summary line, then one table row per stage."""
    header = ["stage", "status", "started", "finished", "took", "counts and verdicts", "reports"]
    table = [
        "<table><tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in header) + "</tr>",
        *(_row_html(row) for row in rows),
        "</table>",
    ]
    body = [_summary(run_record, rows), "\n".join(table)]
    return reports.page(f"Pipeline run: {root}", body)


def run(config: RunPageConfig) -> str:
    """Writes the run page of `config.pipeline_root`; returns where.

    Raises:
        cli.JobError: the root does not exist.
    """
    root = config.pipeline_root.rstrip("/") or "/"
    if FileSystems.get_scheme(root) is None and not os.path.isdir(root):
        raise cli.JobError(f"--pipeline_root={root} is not a directory")
    run_record, _ = _status_files(root)
    rows = read_stage_rows(root, config.serving_dir)
    output = config.output or _join(root, PAGE_FILE)
    artifacts.write_bytes(output, run_page_html(root, rows, run_record).encode("utf-8"))
    return output


@cli.job_command(__doc__.split("\n\n")[0])
@click.option("--pipeline_root", required=True, help="The root every stage of the run wrote under.")
@click.option(
    "--serving_dir",
    default=None,
    help="Where push serves [default: the run's (run_status/run.json), else <root>/serving].",
)
@click.option("--output", default=None, help="Page to write [default: <pipeline_root>/index.html].")
def main(**flags: Any) -> None:
    """Writes the run page."""
    click.echo(f"wrote {run(RunPageConfig(**flags))}")


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
