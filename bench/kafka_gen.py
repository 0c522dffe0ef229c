#!/usr/bin/env python3
"""Extension probe for bench/kafka_bench.py: every second prints ROWS rows of table kbench,
each with its own key and a value that changed since the previous second, so each one is a
changed record the agent must send to Kafka once per egress pass.

usage: kafka_gen.py ROWS
"""
import sys
import time


def main():
    rows = int(sys.argv[1])
    out = sys.stdout.buffer
    tick = 0
    # Keys and labels are formatted once; only the metric columns change per tick.
    prefix = [f"|kbench|node-{k % 64}|{k}|svc-{k % 97}|".encode() for k in range(rows)]
    while True:
        t0 = time.monotonic()
        tick += 1
        tail = f"{tick}|{tick % 1000}.5|\n".encode()
        out.write(b"".join(p + tail for p in prefix))
        out.flush()
        # When the agent reads slower than this, flush() blocks on the full pipe and the
        # next tick starts late: the offered rate then follows what the agent takes.
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
