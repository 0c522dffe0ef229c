#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint and prints every sample as one JSON line, parsed by the
reference exposition-format parser (prometheus_client). Exit 2 if the text does not parse."""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode("utf-8")
try:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            print(json.dumps({"family": family.name, "type": family.type, "name": s.name,
                              "labels": s.labels, "value": s.value}))
except Exception as e:  # noqa: BLE001 - any parse failure is the finding
    print(f"parse error: {e}", file=sys.stderr)
    sys.exit(2)
