"""A consumer group of 3 (librdkafka) rebalances when one member leaves; commits are kept."""
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from common import bootstrap, create_topic, fail, wait_for

TOPIC = "grouped"
GROUP = "trio"
PARTITIONS = 6
admin = AdminClient({"bootstrap.servers": bootstrap()})
create_topic(admin, TOPIC, PARTITIONS)

producer = Producer({"bootstrap.servers": bootstrap()})
for i in range(600):
    producer.produce(TOPIC, value=str(i).encode(), partition=i % PARTITIONS)
if producer.flush(30):
    fail("undelivered")


class Member:
    def __init__(self, name):
        self.name = name
        self.assigned = set()
        self.consumed = 0
        self.stop = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap(),
            "group.id": GROUP,
            "client.id": name,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
        })
        self.thread = threading.Thread(target=self.run, daemon=True)

    def on_assign(self, consumer, partitions):
        self.assigned = {p.partition for p in partitions}

    def on_revoke(self, consumer, partitions):
        self.assigned = set()

    def run(self):
        self.consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)
        while not self.stop.is_set():
            message = self.consumer.poll(0.2)
            if message is None:
                # Idle: re-commit positions, in case a commit was refused during a rebalance.
                try:
                    self.consumer.commit(asynchronous=True)
                except KafkaException:
                    pass  # nothing consumed yet
                continue
            if message.error():
                continue
            self.consumed += 1
            self.consumer.commit(message=message, asynchronous=True)
        self.consumer.close()  # LeaveGroup


members = [Member(f"member-{i}") for i in range(3)]
for member in members:
    member.thread.start()


def balanced(group, each):
    sets = [m.assigned for m in group]
    union = set().union(*sets)
    return union == set(range(PARTITIONS)) and all(len(s) == each for s in sets) and sum(len(s) for s in sets) == PARTITIONS


wait_for(lambda: balanced(members, 2), 90, "3 members with 2 partitions each")
print("assigned:", [sorted(m.assigned) for m in members])
wait_for(lambda: sum(m.consumed for m in members) >= 600, 60, "all 600 records consumed")

leaving = members.pop()
leaving.stop.set()
leaving.thread.join(30)
wait_for(lambda: balanced(members, 3), 90, "2 remaining members with 3 partitions each")
print("after leave:", [sorted(m.assigned) for m in members])

groups = admin.list_consumer_groups().result(timeout=30)
if GROUP not in [g.group_id for g in groups.valid]:
    fail(f"list groups: {[g.group_id for g in groups.valid]}")
description = admin.describe_consumer_groups([GROUP])[GROUP].result(timeout=30)
if len(description.members) != 2:
    fail(f"describe group: {len(description.members)} members")

# Committed offsets: every partition's 100 records end up committed (commits refused during a
# rebalance are retried by whoever owns the partition next).
checker = Consumer({"bootstrap.servers": bootstrap(), "group.id": GROUP})


def committed_offsets():
    committed = checker.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=30)
    return [tp.offset for tp in committed]


wait_for(lambda: committed_offsets() == [100] * PARTITIONS, 60, "offsets 100 committed on every partition")
offsets = committed_offsets()
checker.close()
for member in members:
    member.stop.set()
for member in members:
    member.thread.join(30)
wait_for(lambda: admin.describe_consumer_groups([GROUP])[GROUP].result(timeout=30).state.name == "EMPTY", 30, "empty group")
admin.delete_consumer_groups([GROUP])[GROUP].result(timeout=30)
print("OK group", offsets)
