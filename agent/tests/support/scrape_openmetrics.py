#!/usr/bin/env python3
"""Scrapes an endpoint asking for OpenMetrics the way Prometheus does (its default Accept
header), checks the answer is OpenMetrics, and prints every sample as one JSON line, parsed by
the reference OpenMetrics parser (prometheus_client.openmetrics.parser), which insists on
`# EOF`, counter families without `_total`, no `untyped`, and the rest of the format.

`scrape_openmetrics.py URL [gzip]`. Exit 2 if the body does not parse, 3 if the answer's
Content-Type (or, with gzip, Content-Encoding) is not what was asked for."""
import gzip
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
want_gzip = len(sys.argv) > 2 and sys.argv[2] == "gzip"
req = urllib.request.Request(sys.argv[1], headers={"Accept": ACCEPT})
if want_gzip:
    req.add_header("Accept-Encoding", "gzip")
with urllib.request.urlopen(req, timeout=10) as resp:
    body = resp.read()
    content_type = resp.headers.get("Content-Type", "")
    encoding = resp.headers.get("Content-Encoding", "")
if not content_type.startswith("application/openmetrics-text; version=1.0.0"):
    print(f"asked for OpenMetrics, got Content-Type {content_type!r}", file=sys.stderr)
    sys.exit(3)
if want_gzip:
    if encoding != "gzip":
        print(f"asked for gzip, got Content-Encoding {encoding!r}", file=sys.stderr)
        sys.exit(3)
    body = gzip.decompress(body)
text = body.decode("utf-8")
try:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            print(json.dumps({"family": family.name, "type": family.type, "name": s.name,
                              "labels": s.labels, "value": s.value}))
except ValueError as e:
    print(f"OpenMetrics parser refused the body: {e!r}", file=sys.stderr)
    sys.exit(2)
