"""Standalone HTML pages for people: TFDV statistics and validation anomalies.

Plain functions from protos to HTML text. Each page is self-contained and readable offline: the
statistics page has a static summary table of every feature, followed by TFDV's Facets Overview
(which the browser loads from the web, as in a notebook); the anomalies page lists every anomaly
per split and feature, with TFDV's short and long descriptions.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Sequence

from tensorflow_data_validation.utils import display_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

__all__ = [
    "DEFAULT_SLICE",
    "AnomalyRow",
    "anomalies_html",
    "anomaly_rows",
    "default_slice",
    "page",
    "statistics_html",
    "table",
]

DEFAULT_SLICE = "All Examples"  # TFDV's name of the unsliced dataset.
_TOP_VALUES_SHOWN = 3
_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #202124; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #dadce0; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f3f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #188038; } .bad { color: #c5221f; }
"""


@dataclasses.dataclass(frozen=True)
class AnomalyRow:
    """One reason TFDV gave for one feature (or for the whole dataset) of one split."""

    split: str
    feature: str
    severity: str
    short_description: str
    description: str


def default_slice(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """The unsliced dataset of a statistics list, alone in a list (what TFDV's APIs expect).

    Statistics without slices have one unnamed or `All Examples` dataset; an empty list stays empty.
    """
    result = statistics_pb2.DatasetFeatureStatisticsList()
    for dataset in stats.datasets:
        if dataset.name in ("", DEFAULT_SLICE) or len(stats.datasets) == 1:
            result.datasets.add().CopyFrom(dataset)
            break
    return result


def page(title: str, body: Iterable[str]) -> str:
    """A standalone HTML page (inline styles) around the body parts."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *body,
            "</body></html>",
        ]
    )


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table: numbers right-aligned (ints with separators, floats to 4 digits)."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    lines = [f"<table><tr>{head}</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell:,}</td>'
            if isinstance(cell, int)
            else f'<td class="num">{cell:.4g}</td>'
            if isinstance(cell, float)
            else f"<td>{html.escape(str(cell))}</td>"
            for cell in row
        )
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _feature_row(feature: statistics_pb2.FeatureNameStatistics, num_examples: int) -> list:
    name = ".".join(feature.path.step) or feature.name
    kind = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type)
    if feature.HasField("num_stats"):
        numbers = feature.num_stats
        common = numbers.common_stats
        summary = (
            f"mean {numbers.mean:.4g}, std {numbers.std_dev:.4g}, "
            f"min {numbers.min:.4g}, max {numbers.max:.4g}"
        )
        unique = ""
    else:
        strings = feature.string_stats
        common = strings.common_stats
        top = strings.top_values[:_TOP_VALUES_SHOWN]
        summary = ", ".join(f"{value.value} ({int(value.frequency):,})" for value in top)
        unique = strings.unique
    present = common.num_non_missing
    missing = num_examples - present
    missing_share = f"{missing / num_examples:.1%}" if num_examples else ""
    return [name, kind, present, missing_share, unique, summary]


def statistics_html(stats: statistics_pb2.DatasetFeatureStatisticsList, title: str) -> str:
    """A standalone page for one split's statistics: summary table, slices, Facets Overview."""
    whole = default_slice(stats)
    if not whole.datasets:
        return page(title, ["<p>No statistics (empty split).</p>"])
    dataset = whole.datasets[0]
    rows = [_feature_row(feature, dataset.num_examples) for feature in dataset.features]
    body = [
        f"<p>{dataset.num_examples:,} examples, {len(rows)} features.</p>",
        "<h2>Features</h2>",
        table(["feature", "type", "present", "missing", "unique", "top values / range"], rows),
    ]
    slices = [item for item in stats.datasets if item.name not in ("", DEFAULT_SLICE)]
    if slices:
        body += [
            "<h2>Slices</h2>",
            table(["slice", "examples"], [(item.name, item.num_examples) for item in slices]),
        ]
    body += [
        "<h2>Facets Overview</h2>",
        "<p>TFDV's interactive view; the browser loads Facets from the web to draw it.</p>",
        display_util.get_statistics_html(whole),
    ]
    return page(title, body)


def anomaly_rows(split: str, anomalies: anomalies_pb2.Anomalies) -> list[AnomalyRow]:
    """Every reason of every anomaly of one split, dataset-level reasons first."""
    rows = [
        AnomalyRow(split, "(dataset)", "ERROR", reason.short_description, reason.description)
        for reason in anomalies.dataset_anomaly_info.reason
    ]
    for feature in sorted(anomalies.anomaly_info):
        info = anomalies.anomaly_info[feature]
        severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
        reasons = info.reason or [info]
        rows.extend(
            AnomalyRow(split, feature, severity, reason.short_description, reason.description)
            for reason in reasons
        )
    return rows


def anomalies_html(
    title: str, rows_by_split: dict[str, list[AnomalyRow]], context: Sequence[str]
) -> str:
    """A standalone page listing the anomalies of every split.

    Args:
        title: the page title.
        rows_by_split: anomaly rows per split name, in display order.
        context: lines shown above the tables (schema, environment, baselines).
    """
    body = [f"<p>{html.escape(line)}</p>" for line in context]
    for split, rows in rows_by_split.items():
        if not rows:
            body.append(f'<h2>{html.escape(split)}: <span class="ok">no anomalies</span></h2>')
            continue
        features = len({row.feature for row in rows})
        body.append(
            f'<h2>{html.escape(split)}: <span class="bad">anomalies in {features} '
            f"feature(s)</span></h2>"
        )
        body.append(
            table(
                ["feature", "severity", "anomaly", "description"],
                [(r.feature, r.severity, r.short_description, r.description) for r in rows],
            )
        )
    return page(title, body)
