"""Builds dashboard.ndjson (Kibana 8.x saved objects) from the definitions below.

    python observability/kibana/build_dashboard.py    # rewrites dashboard.ndjson

Objects: the data view `logs-car_detection-*`, a saved search for following one
request (filter on trace.id), aggregation-based visualisations (plus one TSVB for
the error ratio) and the "Car detection — operations" dashboard that holds them.
Aggregation-based visualisations are used because their saved-object format is
small and stable across 8.x; Kibana migrates them on import.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("dashboard.ndjson")
KIBANA_VERSION = "8.17.4"
DATA_VIEW_ID = "car-detection-logs"
PATTERN = "logs-car_detection-*"
CORE = "8.8.0"


def saved(obj_type: str, obj_id: str, attributes: dict, references: list | None = None,
          type_version: str = "8.5.0") -> dict:
    return {"attributes": attributes, "coreMigrationVersion": CORE, "id": obj_id, "managed": False,
            "references": references or [], "type": obj_type, "typeMigrationVersion": type_version}


def search_source(query: str = "") -> dict:
    return {"searchSourceJSON": json.dumps({
        "query": {"query": query, "language": "kuery"}, "filter": [],
        "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"})}


INDEX_REF = [{"id": DATA_VIEW_ID, "name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern"}]


def xy_params(chart: str, axis_title: str, series: list[tuple[str, str]], mode: str = "normal") -> dict:
    return {
        "type": chart,
        "grid": {"categoryLines": False},
        "categoryAxes": [{"id": "CategoryAxis-1", "type": "category", "position": "bottom", "show": True,
                          "style": {}, "scale": {"type": "linear"},
                          "labels": {"show": True, "filter": True, "truncate": 100}, "title": {}}],
        "valueAxes": [{"id": "ValueAxis-1", "name": "LeftAxis-1", "type": "value", "position": "left",
                       "show": True, "style": {}, "scale": {"type": "linear", "mode": mode},
                       "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                       "title": {"text": axis_title}}],
        "seriesParams": [{"show": True, "type": "line" if chart == "line" else ("area" if chart == "area" else "histogram"),
                          "mode": "stacked" if chart != "line" else "normal",
                          "data": {"label": label, "id": agg_id}, "valueAxis": "ValueAxis-1",
                          "drawLinesBetweenPoints": True, "lineWidth": 2, "interpolate": "linear",
                          "showCircles": True} for agg_id, label in series],
        "addTooltip": True, "addLegend": True, "legendPosition": "right", "times": [], "addTimeMarker": False,
        "labels": {"show": False}, "thresholdLine": {"show": False, "value": 10, "width": 1, "style": "full",
                                                       "color": "#E7664C"},
        "detailedTooltip": True, "palette": {"type": "palette", "name": "default"}, "isVislibVis": True,
        "fittingFunction": "linear", "radiusRatio": 9,
    }


def date_histogram(agg_id: str, interval: str = "auto") -> dict:
    return {"id": agg_id, "enabled": True, "type": "date_histogram", "schema": "segment",
            "params": {"field": "@timestamp", "useNormalizedEsInterval": True, "interval": interval,
                       "drop_partials": False, "min_doc_count": 1, "extended_bounds": {}}}


def terms(agg_id: str, field: str, schema: str = "group", size: int = 10, order_by: str = "1") -> dict:
    return {"id": agg_id, "enabled": True, "type": "terms", "schema": schema,
            "params": {"field": field, "size": size, "order": "desc", "orderBy": order_by,
                       "otherBucket": False, "missingBucket": False}}


def metric(agg_id: str, kind: str, field: str | None = None, **params: object) -> dict:
    body = {"id": agg_id, "enabled": True, "type": kind, "schema": "metric", "params": dict(params)}
    if field:
        body["params"]["field"] = field
    return body


def visualization(vis_id: str, title: str, description: str, vis_type: str, aggs: list, params: dict,
                  query: str) -> dict:
    vis_state = {"title": title, "type": vis_type, "aggs": aggs, "params": params}
    return saved("visualization", vis_id, {
        "title": title, "description": description, "uiStateJSON": "{}", "version": 1,
        "visState": json.dumps(vis_state), "kibanaSavedObjectMeta": search_source(query)}, INDEX_REF)


def objects() -> list[dict]:
    data_view = saved("index-pattern", DATA_VIEW_ID, {
        "title": PATTERN, "name": "Car detection logs", "timeFieldName": "@timestamp",
        "fieldFormatMap": json.dumps({"event.duration": {"id": "duration", "params": {
            "inputFormat": "nanoseconds", "outputFormat": "asMilliseconds", "outputPrecision": 1}}}),
    }, type_version="8.0.0")

    trace_search = saved("search", "car-detection-request-trace", {
        "title": "Car detection — follow a request (filter trace.id)",
        "description": "Every service's events of one request: add the filter trace.id : \"<request id>\".",
        "columns": ["service.name", "event.action", "event.outcome", "event.duration", "message"],
        "sort": [["@timestamp", "asc"]], "grid": {}, "hideChart": False, "isTextBasedQuery": False,
        "kibanaSavedObjectMeta": search_source("trace.id : *"),
    }, INDEX_REF, type_version="8.0.0")

    http = 'event.action : "http.request"'
    visualizations = [
        visualization("cd-requests-per-minute", "Requests per minute by service",
                      "One access event per answered HTTP request (health checks excluded).", "line",
                      [metric("1", "count"), date_histogram("2", "1m"), terms("3", "service.name")],
                      xy_params("line", "requests / minute", [("1", "Count")]), http),
        saved("visualization", "cd-error-rate", {
            "title": "Error rate by service (share of failed requests)",
            "description": "event.outcome : failure (4xx/5xx) over all access events, per service.",
            "uiStateJSON": "{}", "version": 1,
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"},
                                                                      "filter": []})},
            "visState": json.dumps({"title": "Error rate by service (share of failed requests)", "type": "metrics",
                                    "aggs": [], "params": {
                "id": "cd-error-rate-tsvb", "type": "timeseries", "time_field": "@timestamp",
                "index_pattern": PATTERN, "use_kibana_indexes": False, "interval": "1m",
                "axis_position": "left", "axis_formatter": "number", "axis_scale": "normal",
                "show_legend": 1, "show_grid": 1, "tooltip_mode": "show_all", "drop_last_bucket": 1,
                "isModelInvalid": False, "filter": {"query": http, "language": "kuery"},
                "series": [{"id": "cd-error-rate-series", "color": "#E7664C", "split_mode": "terms",
                            "terms_field": "service.name", "terms_size": "10", "label": "error rate",
                            "metrics": [{"id": "cd-error-rate-metric", "type": "filter_ratio",
                                         "numerator": {"query": "event.outcome : \"failure\"", "language": "kuery"},
                                         "denominator": {"query": "*", "language": "kuery"},
                                         "metric_agg": "count"}],
                            "separate_axis": 0, "axis_position": "right", "formatter": "percent",
                            "chart_type": "line", "line_width": 2, "point_size": 1, "fill": 0,
                            "stacked": "none", "split_color_mode": "kibana"}]}}),
        }, [], type_version="8.5.0"),
        visualization("cd-latency-percentiles", "Latency percentiles by service (p50, p95, p99)",
                      "event.duration of access events (ns, shown in ms).", "line",
                      [metric("1", "percentiles", "event.duration", percents=[50, 95, 99]),
                       date_histogram("2", "1m"), terms("3", "service.name", order_by="_key")],
                      xy_params("line", "latency", [("1", "Percentiles of event.duration")]), http),
        visualization("cd-detections-per-class", "Detections per class",
                      "Predictions (adapter) containing each class, and the detections they hold.", "histogram",
                      [metric("1", "count"), metric("4", "sum", "detection.count"),
                       terms("2", "detection.classes", schema="segment", size=20)],
                      xy_params("histogram", "predictions / detections", [("1", "Predictions"), ("4", "Detections")]),
                      'event.action : "predict"'),
        visualization("cd-confidence-histogram", "Confidence of returned detections",
                      "Histogram of detection.confidences (every detection of every prediction).", "histogram",
                      [metric("1", "count"),
                       {"id": "2", "enabled": True, "type": "histogram", "schema": "segment",
                        "params": {"field": "detection.confidences", "interval": 0.05, "min_doc_count": False,
                                   "has_extended_bounds": True, "extended_bounds": {"min": 0, "max": 1}}}],
                      xy_params("histogram", "detections", [("1", "Count")]), 'event.action : "predict"'),
        visualization("cd-model-versions", "Model versions in use",
                      "Predictions per model version over time (a rollout shows as a hand-over).", "area",
                      [metric("1", "count"), date_histogram("2"), terms("3", "model.version")],
                      xy_params("area", "predictions", [("1", "Count")]), 'event.action : "predict"'),
        visualization("cd-drift-brightness", "Drift: image brightness, contrast and colourfulness (mean)",
                      "Means of the image features of served requests; a lasting shift means the input changed.",
                      "line",
                      [metric("1", "avg", "image.brightness"), metric("3", "avg", "image.contrast"),
                       metric("4", "avg", "image.colourfulness"), date_histogram("2")],
                      xy_params("line", "value", [("1", "brightness"), ("3", "contrast"), ("4", "colourfulness")]),
                      'event.action : "detect"'),
        visualization("cd-drift-sharpness", "Drift: image sharpness (median)",
                      "Median Laplacian variance; a drop means blurred or out-of-focus input.", "line",
                      [metric("1", "median", "image.sharpness"), date_histogram("2")],
                      xy_params("line", "Laplacian variance", [("1", "median sharpness")]), 'event.action : "detect"'),
        visualization("cd-drift-saturation", "Drift: image saturation (mean)",
                      "Mean HSV saturation, 0..1 (night, fog and greyscale cameras pull it down).", "line",
                      [metric("1", "avg", "image.saturation"), date_histogram("2")],
                      xy_params("line", "saturation", [("1", "saturation")]), 'event.action : "detect"'),
        visualization("cd-drift-size", "Drift: image width and height (mean)",
                      "A new camera or client-side resizing shows here first.", "line",
                      [metric("1", "avg", "image.width"), metric("3", "avg", "image.height"), date_histogram("2")],
                      xy_params("line", "pixels", [("1", "width"), ("3", "height")]), 'event.action : "detect"'),
    ]

    panels, references = [], []
    layout = [(0, 0, 24, 12), (24, 0, 24, 12), (0, 12, 24, 12), (24, 12, 24, 12), (0, 24, 24, 12),
              (24, 24, 24, 12), (0, 36, 24, 12), (24, 36, 24, 12), (0, 48, 24, 12), (24, 48, 24, 12)]
    for index, (vis, (x, y, w, h)) in enumerate(zip(visualizations, layout), start=1):
        panel = f"panel-{index}"
        panels.append({"version": KIBANA_VERSION, "type": "visualization",
                       "gridData": {"x": x, "y": y, "w": w, "h": h, "i": panel}, "panelIndex": panel,
                       "embeddableConfig": {"enhancements": {}}, "panelRefName": f"panel_{panel}"})
        references.append({"name": f"{panel}:panel_{panel}", "type": "visualization", "id": vis["id"]})
    search_panel = f"panel-{len(panels) + 1}"
    panels.append({"version": KIBANA_VERSION, "type": "search",
                   "gridData": {"x": 0, "y": 60, "w": 48, "h": 15, "i": search_panel}, "panelIndex": search_panel,
                   "embeddableConfig": {"enhancements": {}}, "panelRefName": f"panel_{search_panel}"})
    references.append({"name": f"{search_panel}:panel_{search_panel}", "type": "search", "id": trace_search["id"]})

    dashboard = saved("dashboard", "car-detection-operations", {
        "title": "Car detection — operations",
        "description": "Traffic, errors and latency per service; detections, confidence and model versions; "
                       "image-feature drift. Logs of every service (data stream logs-car_detection-default).",
        "panelsJSON": json.dumps(panels),
        "optionsJSON": json.dumps({"useMargins": True, "syncColors": False, "syncCursor": True,
                                   "syncTooltips": False, "hidePanelTitles": False}),
        "timeRestore": True, "timeFrom": "now-24h", "timeTo": "now",
        "refreshInterval": {"pause": False, "value": 60000},
        "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"},
                                                                  "filter": []})},
        "version": 1,
    }, references, type_version="8.9.0")
    return [data_view, trace_search, *visualizations, dashboard]


def main() -> None:
    OUT.write_text("".join(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n" for obj in objects()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
