"""The audit report as Markdown: the .md file, and the source of the HTML pack's usage and
performance sections (rendered there by the `markdown` library, never printed raw)."""
from __future__ import annotations

import json
import math
from typing import Any

from governance import drift as drift_mod

STATUS_MARK = {"pass": "PASS", "fail": "FAIL", "warning": "WARN", "not_measured": "N/A"}


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if not math.isnan(value) else "n/a"
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "none"
    return str(value)


def usage_markdown(usage: dict[str, Any]) -> list[str]:
    return ["| metric | value |", "|---|---|",
            f"| predictions | {usage['predictions']} |",
            f"| distinct users (pseudonymous hashes) | {usage['distinct_users']} |",
            f"| distinct API clients | {usage['distinct_clients']} |",
            f"| detections | {usage['detections']} ({usage['predictions_without_detection']} predictions without any) |",
            f"| inference time ms mean / p95 / p99 | {fmt(usage['inference_time_ms']['mean'])} / "
            f"{fmt(usage['inference_time_ms']['p95'])} / {fmt(usage['inference_time_ms']['p99'])} |",
            f"| class distribution | {fmt(usage['class_distribution'])} |",
            f"| model versions | {fmt(usage['model_versions'])} |",
            f"| gateway requests / 5xx rate / 4xx rate | {usage['error_rate']['requests']} / "
            f"{fmt(usage['error_rate']['server_error_rate'])} / {fmt(usage['error_rate']['client_error_rate'])} |",
            f"| feedback / contested predictions / contest rate | {usage['feedback']['total']} / "
            f"{usage['feedback']['contested_predictions']} / {fmt(usage['feedback']['contest_rate'])} |",
            f"| data-subject and access events | {fmt(usage['data_subject_requests'])} |", "",
            f"Error-rate source: {usage['error_rate']['source']}.", "",
            "| day | predictions | users | gateway requests | 4xx | 5xx |", "|---|---|---|---|---|---|",
            *[f"| {d} | {v['predictions']} | {v['users']} | {v['requests']} | {v['client_errors']} | {v['server_errors']} |"
              for d, v in usage["per_day"].items()], ""]


def performance_markdown(perf: dict[str, Any]) -> list[str]:
    dd = perf["data_drift"]
    lines = ["| latency (ms) | n | mean | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for label, key in (("model inference", "model_inference_ms"), ("gateway /api/detect end to end", "gateway_detect_end_to_end_ms")):
        p = perf[key]
        lines.append(f"| {label} | {p['n']} | {fmt(p['mean'])} | {fmt(p['p50'])} | {fmt(p['p95'])} | {fmt(p['p99'])} | {fmt(p['max'])} |")
    hist = perf["confidence"]["histogram"]
    lines += ["", f"Confidence of stored detections: mean {fmt(perf['confidence']['mean'])}, "
              f"share below 0.5: {fmt(perf['confidence']['below_0.5_share'])}.", "",
              "| confidence | " + " | ".join(hist) + " |", "|---|" + "---|" * len(hist),
              "| detections | " + " | ".join(str(v) for v in hist.values()) + " |", ""]
    if "features" in dd:
        lines += [f"Data drift (PSI vs {dd.get('baseline', {}).get('images')} training frames; "
                  f"<0.1 stable, 0.1-0.25 moderate, >0.25 significant; "
                  f"levels judged on PSI minus its sampling noise, the PSI that n undrifted images exceed 5 % of the time; "
                  f"{'enough data' if dd['enough_data'] else f'fewer than {drift_mod.MIN_SAMPLE} images: indicative only'}):", "",
                  "| feature | n | PSI | noise floor | level | baseline mean | production mean |", "|---|---|---|---|---|---|---|",
                  *[f"| {k} | {v['n']} | {fmt(v['psi'])} | {fmt(v.get('noise_floor'))} | {v['level']} | "
                    f"{fmt(v.get('baseline_mean'))} | {fmt(v.get('production_mean'))} |" for k, v in dd["features"].items()], ""]
    else:
        lines += [f"Data drift: {dd.get('error')}", ""]
    av = perf["availability"]
    lines += [f"Availability now: {av['healthy_now']} probes healthy ({fmt(av['probes_now'])}); gateway non-5xx ratio "
              f"{fmt(av['gateway_non_5xx_ratio'])}; adapter NOT_SERVING transitions {av['adapter_not_serving_transitions']}.", ""]
    return lines


def report_to_markdown(report: dict[str, Any], plots: dict[str, Any]) -> str:
    usage, comp = report["usage"], report["compliance"]
    lines = ["# Audit report — car detection system", "",
             f"Generated {report['generated_at']} · database {report['database']} · period {usage['period']['days']} days "
             f"({usage['period']['from']} → {usage['period']['to']})", "",
             f"Overall: **{comp['overall'].upper()}** — {fmt(comp['summary'])} (model {comp['model_id']})", "",
             "| status | check | finding | owner | action | due |", "|---|---|---|---|---|---|"]
    for c in comp["checks"]:
        lines.append(f"| {STATUS_MARK.get(c['status'], c['status'])} | {c['title']} | {fmt(c.get('finding'))} | "
                     f"{c.get('owner', '')} | {c.get('action', '')} | {c.get('due', '')} |".replace("\n", " "))
    lines += ["", "## 1. Usage", "", *usage_markdown(usage)]
    for name in ("per_day", "classes"):
        if name in plots:
            lines += [f"![{plots[name].title}]({plots[name].path.parent.name}/{plots[name].path.name})", ""]
    lines += ["## 2. Compliance", "", "| status | check | evidence |", "|---|---|---|"]
    for c in comp["checks"]:
        text = json.dumps(c["evidence"], default=str)
        lines.append(f"| {STATUS_MARK.get(c['status'], c['status'])} | {c['title']} | "
                     f"{(text if len(text) <= 400 else text[:400] + '…').replace('|', '/')} |")
    lines += ["", "Basis of each measurement:", ""]
    lines += [f"- `{c['id']}`: {c['basis']}" for c in comp["checks"] if c.get("basis")]
    lines += ["", "## 3. Performance", "", *performance_markdown(report["performance"])]
    for name in ("latency", "confidence", "drift", "reliability", "crossval"):
        if name in plots:
            lines += [f"![{plots[name].title}]({plots[name].path.parent.name}/{plots[name].path.name})", ""]
    return "\n".join(lines) + "\n"
