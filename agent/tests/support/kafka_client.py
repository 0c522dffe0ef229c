#!/usr/bin/env python3
"""Kafka client for gopher's integration tests (confluent-kafka, whose wheel bundles a
librdkafka recent enough for tansu; Debian's librdkafka 2.0 / kcat are not).

consume BROKER TOPIC[,TOPIC...]: reads partition 0 of each TOPIC from the beginning (no consumer group: the
        partition is assigned, nothing is committed) and prints one JSON line per message,
        {"topic", "offset", "key", "value"} (key and value as text, null when absent), until
        killed or stdin closes. Errors go to stderr as they come; the consumer keeps retrying.
produce BROKER TOPIC N: produces N messages "m0" .. "m<N-1>" (key "k<i>"), waits for every
        delivery report, prints "delivered <ok> failed <failed>", exits 0 only if all arrived.

With KAFKA_SSL_CA set (a CA file, PEM), both connect with TLS (security.protocol = ssl).
"""
import json
import os
import sys
import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def tls():
    ca = os.environ.get("KAFKA_SSL_CA")
    return {"security.protocol": "ssl", "ssl.ca.location": ca} if ca else {}


def consume(broker, topic):
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    c = Consumer({
        "bootstrap.servers": broker,
        "group.id": "gopher-tests",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "reconnect.backoff.max.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        **tls(),
    })
    c.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topic.split(",")])
    while not stop.is_set():
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                print(f"consumer error: {m.error()}", file=sys.stderr, flush=True)
            continue
        print(json.dumps({
            "topic": m.topic(),
            "offset": m.offset(),
            "key": text(m.key()),
            "value": text(m.value()),
        }), flush=True)
    c.close()


def produce(broker, topic, n):
    p = Producer({"bootstrap.servers": broker, "message.timeout.ms": 20000, **tls()})
    done = {"ok": 0, "failed": 0}

    def report(err, _msg):
        done["failed" if err else "ok"] += 1
        if err:
            print(f"delivery failed: {err}", file=sys.stderr, flush=True)

    for i in range(n):
        p.produce(topic, value=f"m{i}".encode(), key=f"k{i}".encode(), on_delivery=report)
        p.poll(0)
    p.flush(30)
    print(f"delivered {done['ok']} failed {done['failed']}", flush=True)
    return 0 if done["ok"] == n else 1


def main():
    cmd, broker, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "consume":
        consume(broker, topic)
        return 0
    if cmd == "produce":
        return produce(broker, topic, int(sys.argv[4]))
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
