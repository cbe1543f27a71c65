"""Helpers shared by the client scripts: each script takes the bootstrap address as argv[1]."""
import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic


def bootstrap():
    return sys.argv[1]


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def create_topic(admin: AdminClient, name: str, partitions: int, config=None):
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})])
    for _, future in futures.items():
        future.result(timeout=30)


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    fail(f"timed out after {timeout_s}s waiting for {what}")
