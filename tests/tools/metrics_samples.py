#!/usr/bin/python3
"""Reads a Prometheus text exposition on stdin with the Prometheus client library's own parser
and prints each sample as one JSON object per line: {"name", "labels", "value", "type"}.

Exits 1 with the parser's complaint on stderr when the text does not follow the format, and
when a family breaks the naming rules the format's documentation sets: counters named
*_total, histograms with cumulative buckets ending at le="+Inf" equal to their _count.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.split()[3] == "counter":
            if not line.split()[2].endswith("_total"):
                sys.exit(f"counter not named *_total: {line}")
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        sys.exit(f"not the text exposition format: {error}")
    for family in families:
        if family.type == "histogram":
            check_histogram(family)
        for sample in family.samples:
            print(json.dumps({"name": sample.name, "labels": sample.labels,
                              "value": sample.value, "type": family.type}))


def check_histogram(family):
    series = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = json.dumps(labels, sort_keys=True)
        entry = series.setdefault(key, {"buckets": [], "count": None})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
    for key, entry in series.items():
        buckets = entry["buckets"]
        if not buckets or buckets[-1][0] != float("inf"):
            sys.exit(f"{family.name} {key}: no le=\"+Inf\" bucket last")
        if any(b[1] < a[1] for a, b in zip(buckets, buckets[1:])):
            sys.exit(f"{family.name} {key}: buckets not cumulative")
        if buckets[-1][1] != entry["count"]:
            sys.exit(f"{family.name} {key}: +Inf bucket is not the count")


if __name__ == "__main__":
    main()
