"""100k records over 6 partitions with confluent-kafka (librdkafka): each exactly once, in order."""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from common import bootstrap, create_topic, fail

RECORDS = 100_000
PARTITIONS = 6
TOPIC = "exactly-once"
idempotent = len(sys.argv) > 2 and sys.argv[2] == "idempotent"
if idempotent:
    TOPIC = "exactly-once-idempotent"

admin = AdminClient({"bootstrap.servers": bootstrap()})
create_topic(admin, TOPIC, PARTITIONS)

producer = Producer({
    "bootstrap.servers": bootstrap(),
    "linger.ms": 5,
    "acks": "all",
    "enable.idempotence": idempotent,
    "compression.type": "lz4",
})
errors = []


def delivered(error, message):
    if error is not None:
        errors.append(error)


for i in range(RECORDS):
    partition = i % PARTITIONS
    sequence = i // PARTITIONS
    while True:
        try:
            producer.produce(TOPIC, key=str(partition).encode(), value=f"{partition}:{sequence}".encode(),
                             partition=partition, on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
remaining = producer.flush(60)
if remaining or errors:
    fail(f"{remaining} undelivered, errors: {errors[:5]}")

consumer = Consumer({
    "bootstrap.servers": bootstrap(),
    "group.id": "exactly-once-reader",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
next_sequence = [0] * PARTITIONS
expected_per_partition = [len(range(p, RECORDS, PARTITIONS)) for p in range(PARTITIONS)]
seen = 0
deadline = time.monotonic() + 120
while seen < RECORDS and time.monotonic() < deadline:
    for message in consumer.consume(num_messages=10_000, timeout=1.0):
        if message.error():
            fail(f"consume error: {message.error()}")
        partition, sequence = (int(x) for x in message.value().decode().split(":"))
        if partition != message.partition():
            fail(f"record {partition}:{sequence} arrived on partition {message.partition()}")
        if sequence != next_sequence[partition]:
            fail(f"partition {partition}: expected sequence {next_sequence[partition]}, got {sequence} "
                 f"at offset {message.offset()}")
        if message.offset() != sequence:
            fail(f"partition {partition}: sequence {sequence} at offset {message.offset()}")
        next_sequence[partition] += 1
        seen += 1
consumer.close()
if next_sequence != expected_per_partition:
    fail(f"consumed {next_sequence}, expected {expected_per_partition}")
print(f"OK {seen} records, per partition {next_sequence}, idempotent={idempotent}")
