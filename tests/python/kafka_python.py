"""kafka-python 3 negotiates versions, produces, consumes in a group and commits."""
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from common import bootstrap, fail

admin = KafkaAdminClient(bootstrap_servers=bootstrap())
admin.create_topics([NewTopic("kp-topic", num_partitions=3, replication_factor=1)])
admin.close()

producer = KafkaProducer(bootstrap_servers=bootstrap(), acks="all")
futures = [producer.send("kp-topic", key=str(i % 3).encode(), value=f"v{i}".encode()) for i in range(3000)]
producer.flush(60)
offsets = [future.get(timeout=30) for future in futures]
producer.close()
if len(offsets) != 3000:
    fail("missing acknowledgements")

consumer = KafkaConsumer("kp-topic", bootstrap_servers=bootstrap(), group_id="kp-group", auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=15_000)
values = set()
for message in consumer:
    values.add(message.value)
    if len(values) == 3000:
        break
consumer.commit()
consumer.close()
if values != {f"v{i}".encode() for i in range(3000)}:
    fail(f"kafka-python consumed {len(values)} distinct values")
print("OK kafka-python", len(values))
