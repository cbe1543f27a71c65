"""Idempotent acks=all producer for the broker crash loop (tests/crash_loop.rs).

argv: bootstrap topic partitions seconds. Produces values "0", "1", ... (value n to partition
n % partitions) at a bounded rate for `seconds`, then flushes. Every delivery report goes to
stdout as "ack PARTITION OFFSET VALUE" or "err VALUE ERROR"; the last line is
"done SENT UNFLUSHED". The broker is SIGKILLed and restarted underneath it many times.
"""
import signal
import sys
import time

from confluent_kafka import Producer

bootstrap, topic, partitions, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "message.timeout.ms": 300000,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
    "socket.connection.setup.timeout.ms": 2000,
    "topic.metadata.refresh.interval.ms": 1000,
})


def report(err, msg):
    value = msg.value().decode()
    if err is None:
        print(f"ack {msg.partition()} {msg.offset()} {value}", flush=True)
    else:
        print(f"err {value} {err}", flush=True)


RATE_PER_S = 2000
sent = 0
start = time.monotonic()
deadline = [start + seconds]


def stop(signum, frame):
    # SIGINT from the test: stop producing, then flush what is in flight.
    deadline[0] = time.monotonic()


signal.signal(signal.SIGINT, stop)
while time.monotonic() < deadline[0]:
    # Open-loop pacing, bounded: never more than RATE_PER_S on average.
    if sent > (time.monotonic() - start) * RATE_PER_S:
        producer.poll(0.001)
        continue
    try:
        producer.produce(topic, value=str(sent).encode(), partition=sent % partitions, on_delivery=report)
        sent += 1
    except BufferError:
        producer.poll(0.05)
    producer.poll(0)
remaining = producer.flush(120)
print(f"done {sent} {remaining}", flush=True)
