#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint and prints every sample as one JSON line, parsed by the
reference exposition-format parser (prometheus_client). Exit 2 if the text does not parse.

`scrape.py URL gzip` asks for gzip (Accept-Encoding: gzip) and exits 3 unless the answer is
gzip-encoded; the body is inflated before parsing.

`scrape.py URL [gzip] openmetrics` asks for OpenMetrics the way Prometheus does (its default
Accept header), exits 3 unless the answer's Content-Type is OpenMetrics 1.0.0, and parses it
with the reference OpenMetrics parser (prometheus_client.openmetrics.parser), which insists
on `# EOF`, counter families without `_total`, no `untyped`, and the rest of the format."""
import gzip
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
want_gzip = "gzip" in sys.argv[2:]
want_om = "openmetrics" in sys.argv[2:]
req = urllib.request.Request(sys.argv[1])
if want_gzip:
    req.add_header("Accept-Encoding", "gzip")
if want_om:
    req.add_header("Accept", PROMETHEUS_ACCEPT)
with urllib.request.urlopen(req, timeout=10) as resp:
    body = resp.read()
    encoding = resp.headers.get("Content-Encoding", "")
    content_type = resp.headers.get("Content-Type", "")
if want_om and not content_type.startswith("application/openmetrics-text; version=1.0.0"):
    print(f"asked for OpenMetrics, got Content-Type {content_type!r}", file=sys.stderr)
    sys.exit(3)
if want_gzip:
    if encoding != "gzip":
        print(f"asked for gzip, got Content-Encoding {encoding!r}", file=sys.stderr)
        sys.exit(3)
    body = gzip.decompress(body)
text = body.decode("utf-8")
try:
    for family in (parse_om if want_om else parse_text)(text):
        for s in family.samples:
            print(json.dumps({"family": family.name, "type": family.type, "name": s.name,
                              "labels": s.labels, "value": s.value}))
except Exception as e:  # noqa: BLE001 - any parse failure is the finding
    print(f"parse error: {e}", file=sys.stderr)
    sys.exit(2)
