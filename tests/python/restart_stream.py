"""An idempotent acks=all confluent-kafka stream while the test restarts the broker twice.

argv: bootstrap, markers dir. Creates marker file "1" once a quarter of the records are
acknowledged (the test then stops the broker with SIGTERM and restarts it) and "2" at half (the
test SIGKILLs and restarts it). At the end, every delivery-reported (partition, offset) must hold
the record's value, and the topic must hold each value exactly once.
"""
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from common import bootstrap, create_topic, fail

RECORDS = 20_000
PARTITIONS = 4
TOPIC = "restart-stream"
# Pace: spread the stream over about 8 s so both restarts land in the middle of it.
RECORDS_PER_SECOND = 2_500
markers = sys.argv[2]

admin = AdminClient({"bootstrap.servers": bootstrap()})
create_topic(admin, TOPIC, PARTITIONS)

producer = Producer({
    "bootstrap.servers": bootstrap(),
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    # Long enough to ride out two broker restarts.
    "message.timeout.ms": 90_000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
})
acknowledged = {}
errors = []


def delivered(error, message):
    if error is not None:
        errors.append(str(error))
        return
    key = (message.partition(), message.offset())
    if key in acknowledged:
        errors.append(f"offset {key} acknowledged twice")
    acknowledged[key] = message.value().decode()


def mark(name):
    path = os.path.join(markers, name)
    if not os.path.exists(path):
        with open(path, "w") as marker:
            marker.write(str(len(acknowledged)))
        print(f"marker {name} at {len(acknowledged)} acknowledged", flush=True)


started = time.monotonic()
for i in range(RECORDS):
    while time.monotonic() - started < i / RECORDS_PER_SECOND:
        producer.poll(0.001)
    while True:
        try:
            producer.produce(TOPIC, value=str(i).encode(), partition=i % PARTITIONS, on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)
    if len(acknowledged) >= RECORDS // 4:
        mark("1")
    if len(acknowledged) >= RECORDS // 2:
        mark("2")
remaining = producer.flush(100)
if remaining or errors:
    fail(f"{remaining} undelivered, errors: {errors[:5]}")
if len(acknowledged) != RECORDS:
    fail(f"{len(acknowledged)} of {RECORDS} acknowledged")

consumer = Consumer({
    "bootstrap.servers": bootstrap(),
    "group.id": "restart-stream-checker",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
ends = {}
for p in range(PARTITIONS):
    _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)
    ends[p] = high
consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
stored = {}
deadline = time.monotonic() + 60
while len(stored) < sum(ends.values()) and time.monotonic() < deadline:
    message = consumer.poll(1.0)
    if message is None or message.error():
        continue
    stored[(message.partition(), message.offset())] = message.value().decode()
consumer.close()
if len(stored) != sum(ends.values()):
    fail(f"read {len(stored)} of {sum(ends.values())} stored records")

lost = [(key, value) for key, value in acknowledged.items() if stored.get(key) != value]
values = sorted(stored.values(), key=int)
duplicated = len(values) - len(set(values))
print(f"acknowledged {len(acknowledged)}, stored {len(stored)}, lost {len(lost)}, duplicated {duplicated}")
if lost or duplicated:
    fail(f"lost (first 5): {lost[:5]}; duplicated {duplicated}")
