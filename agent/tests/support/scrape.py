#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint and prints every sample as one JSON line, parsed by the
reference exposition-format parser (prometheus_client). Exit 2 if the text does not parse.

`scrape.py URL gzip` asks for gzip (Accept-Encoding: gzip) and exits 3 unless the answer is
gzip-encoded; the body is inflated before parsing."""
import gzip
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

want_gzip = len(sys.argv) > 2 and sys.argv[2] == "gzip"
req = urllib.request.Request(sys.argv[1])
if want_gzip:
    req.add_header("Accept-Encoding", "gzip")
with urllib.request.urlopen(req, timeout=10) as resp:
    body = resp.read()
    encoding = resp.headers.get("Content-Encoding", "")
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
except Exception as e:  # noqa: BLE001 - any parse failure is the finding
    print(f"parse error: {e}", file=sys.stderr)
    sys.exit(2)
