"""Topic admin through confluent-kafka's AdminClient and kafka-python's KafkaAdminClient."""
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic)
from confluent_kafka import KafkaException
from kafka.admin import KafkaAdminClient

from common import bootstrap, fail, wait_for

admin = AdminClient({"bootstrap.servers": bootstrap()})

futures = admin.create_topics([
    NewTopic("admin-a", num_partitions=3, replication_factor=1, config={"retention.ms": "60000"}),
    NewTopic("admin-b", num_partitions=1, replication_factor=1),
])
for name, future in futures.items():
    future.result(timeout=30)

# Creating it again is TOPIC_ALREADY_EXISTS.
try:
    admin.create_topics([NewTopic("admin-a", num_partitions=1, replication_factor=1)])["admin-a"].result(timeout=30)
    fail("duplicate create succeeded")
except KafkaException as error:
    if "already exists" not in str(error).lower() and "TOPIC_ALREADY_EXISTS" not in str(error):
        fail(f"duplicate create: unexpected error {error}")

# Replication factor 3 on one node is refused.
try:
    admin.create_topics([NewTopic("admin-rf", num_partitions=1, replication_factor=3)])["admin-rf"].result(timeout=30)
    fail("replication factor 3 accepted")
except KafkaException:
    pass

metadata = admin.list_topics(timeout=30)
if len(metadata.topics["admin-a"].partitions) != 3:
    fail(f"admin-a has {len(metadata.topics['admin-a'].partitions)} partitions")

resource = ConfigResource(ConfigResource.Type.TOPIC, "admin-a")
configs = admin.describe_configs([resource])[resource].result(timeout=30)
if configs["retention.ms"].value != "60000":
    fail(f"retention.ms is {configs['retention.ms'].value}")
if configs["cleanup.policy"].value != "delete":
    fail("cleanup.policy missing")
if configs["preallocate"].value != "false":
    fail(f"preallocate is {configs['preallocate'].value}")

incremental = ConfigResource(ConfigResource.Type.TOPIC, "admin-a", incremental_configs=[
    ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ConfigEntry("preallocate", "true", incremental_operation=AlterConfigOpType.SET),
])
admin.incremental_alter_configs([incremental])[incremental].result(timeout=30)
configs = admin.describe_configs([resource])[resource].result(timeout=30)
if configs["retention.bytes"].value != "1048576" or configs["retention.ms"].value != str(7 * 24 * 3600 * 1000):
    fail(f"incremental alter not applied: {configs['retention.bytes'].value} {configs['retention.ms'].value}")
if configs["preallocate"].value != "true":
    fail(f"preallocate not applied: {configs['preallocate'].value}")

bad = ConfigResource(ConfigResource.Type.TOPIC, "admin-a", incremental_configs=[
    ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)])
try:
    admin.incremental_alter_configs([bad])[bad].result(timeout=30)
    fail("cleanup.policy=compact accepted")
except KafkaException:
    pass

admin.create_partitions([NewPartitions("admin-a", 5)])["admin-a"].result(timeout=30)
wait_for(lambda: len(admin.list_topics(timeout=30).topics["admin-a"].partitions) == 5, 30, "5 partitions")

cluster = admin.describe_cluster().result(timeout=30) if hasattr(admin, "describe_cluster") else None
if cluster is not None and len(cluster.nodes) != 1:
    fail(f"describe_cluster nodes: {cluster.nodes}")

admin.delete_topics(["admin-b"])["admin-b"].result(timeout=30)
wait_for(lambda: "admin-b" not in admin.list_topics(timeout=30).topics, 30, "admin-b deleted")

# kafka-python's admin speaks its own version choices.
kp = KafkaAdminClient(bootstrap_servers=bootstrap())
names = kp.list_topics()
if "admin-a" not in names or "admin-b" in names:
    fail(f"kafka-python list_topics: {names}")
kp.delete_topics(["admin-a"])
kp.close()
wait_for(lambda: "admin-a" not in admin.list_topics(timeout=30).topics, 30, "admin-a deleted")
print("OK admin")
