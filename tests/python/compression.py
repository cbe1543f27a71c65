"""gzip, snappy, lz4 and zstd batches from librdkafka and kafka-python round-trip unchanged."""
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaPythonPartition

from common import bootstrap, create_topic, fail

CODECS = ["gzip", "snappy", "lz4", "zstd"]
RECORDS = 2_000
admin = AdminClient({"bootstrap.servers": bootstrap()})

for codec in CODECS:
    topic = f"compressed-{codec}"
    create_topic(admin, topic, 1)
    producer = Producer({"bootstrap.servers": bootstrap(), "compression.type": codec, "linger.ms": 20})
    values = [f"{codec}-{i}-".encode() * 10 for i in range(RECORDS)]
    for value in values:
        producer.produce(topic, value=value, partition=0)
    if producer.flush(60):
        fail(f"{codec}: undelivered records")
    # kafka-python appends a second run of the same codec.
    kp = KafkaProducer(bootstrap_servers=bootstrap(), compression_type=codec, linger_ms=20)
    more = [f"kp-{codec}-{i}".encode() for i in range(RECORDS)]
    for value in more:
        kp.send(topic, value=value, partition=0)
    kp.flush(60)
    kp.close()

    consumer = Consumer({"bootstrap.servers": bootstrap(), "group.id": f"reader-{codec}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 2 * RECORDS and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=5000, timeout=1.0):
            if message.error():
                fail(f"{codec}: {message.error()}")
            got.append(message.value())
    consumer.close()
    if got != values + more:
        fail(f"{codec}: librdkafka read {len(got)} records, mismatch")

    # kafka-python decompresses what both producers wrote.
    reader = KafkaConsumer(bootstrap_servers=bootstrap(), enable_auto_commit=False, consumer_timeout_ms=10_000)
    reader.assign([KafkaPythonPartition(topic, 0)])
    reader.seek_to_beginning()
    got_kp = []
    for message in reader:
        got_kp.append(message.value)
        if len(got_kp) == 2 * RECORDS:
            break
    reader.close()
    if got_kp != values + more:
        fail(f"{codec}: kafka-python read {len(got_kp)} records, mismatch")
    print(f"OK {codec}: {len(got)} records via librdkafka and kafka-python")
