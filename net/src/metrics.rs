//! Per-core counters and their Prometheus text rendering.
//!
//! Each core counts in plain `Cell`s (no atomics on the data path). A scrape of `/metrics` asks
//! every core for a [`MetricsSnapshot`] over the mesh, sums them, and encodes the totals with
//! `prometheus-client`. Latency is exported as a fixed-bucket histogram per API.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Upper bounds of the request latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000];

/// Request counters of one API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCounters {
    /// Requests served.
    pub requests: u64,
    /// Requests whose answer carried an error or that closed the connection.
    pub failures: u64,
    /// Sum of latencies in microseconds.
    pub latency_us_sum: u64,
    /// Counts per bucket of [`LATENCY_BUCKETS_US`] (not cumulative), plus one overflow bucket.
    pub latency_buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
}

/// Counters of one core.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    /// Per API name.
    pub apis: RefCell<BTreeMap<&'static str, ApiCounters>>,
    /// Record bytes appended.
    pub bytes_in: Cell<u64>,
    /// Record bytes read.
    pub bytes_out: Cell<u64>,
    /// Mesh requests sent to other cores.
    pub mesh_messages_sent: Cell<u64>,
    /// Open client connections.
    pub connections_open: Cell<u64>,
    /// Connections closed for bad framing or undecodable requests.
    pub connections_rejected: Cell<u64>,
    /// Connections refused at accept because the core was at its connection limit.
    pub connections_refused: Cell<u64>,
    /// Connections closed for idling past the limit or missing a request's deadline.
    pub connections_timed_out: Cell<u64>,
    /// Times a connection stopped reading because it had the most requests in flight allowed;
    /// requests waiting in the socket meanwhile are not in the request latency histogram.
    pub reads_paused: Cell<u64>,
    /// Microseconds connections spent paused that way.
    pub reads_paused_us: Cell<u64>,
}

/// A copy of one core's counters that can cross cores.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// The core.
    pub core: usize,
    /// Per API name.
    pub apis: BTreeMap<&'static str, ApiCounters>,
    /// Record bytes appended.
    pub bytes_in: u64,
    /// Record bytes read.
    pub bytes_out: u64,
    /// Mesh requests sent.
    pub mesh_messages_sent: u64,
    /// Open connections.
    pub connections_open: u64,
    /// Rejected connections.
    pub connections_rejected: u64,
    /// Refused connections.
    pub connections_refused: u64,
    /// Timed-out connections.
    pub connections_timed_out: u64,
    /// Reads paused at the in-flight limit.
    pub reads_paused: u64,
    /// Microseconds of paused reads.
    pub reads_paused_us: u64,
    /// Storage counters of the core's partitions.
    pub storage: crate::backend::StorageStats,
    /// Partitions of the core that failed or refused to open.
    pub failed_partitions: u64,
}

impl CoreMetrics {
    /// Count one request of `api` that took `latency`.
    pub fn record_request(&self, api: &'static str, latency: Duration, failed: bool) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut apis = self.apis.borrow_mut();
        let counters = apis.entry(api).or_default();
        counters.requests += 1;
        counters.failures += u64::from(failed);
        counters.latency_us_sum = counters.latency_us_sum.saturating_add(micros);
        let bucket = LATENCY_BUCKETS_US.iter().position(|bound| micros <= *bound).unwrap_or(LATENCY_BUCKETS_US.len());
        counters.latency_buckets[bucket] += 1;
    }

    /// Copy the counters.
    pub fn snapshot(&self, core: usize) -> MetricsSnapshot {
        MetricsSnapshot {
            core,
            apis: self.apis.borrow().clone(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            mesh_messages_sent: self.mesh_messages_sent.get(),
            connections_open: self.connections_open.get(),
            connections_rejected: self.connections_rejected.get(),
            connections_refused: self.connections_refused.get(),
            connections_timed_out: self.connections_timed_out.get(),
            reads_paused: self.reads_paused.get(),
            reads_paused_us: self.reads_paused_us.get(),
            storage: crate::backend::StorageStats::default(),
            failed_partitions: 0,
        }
    }
}

type Labels = Vec<(String, String)>;

/// Adds `counts` (per bucket of `bounds`, then one overflow bucket) to `family` as cumulative
/// buckets, Prometheus style: `le_us="bound"` counts everything at or below, `+Inf` everything.
fn add_buckets(family: &Family<Labels, Counter>, labels: &Labels, bounds: &[u64], counts: &[u64]) {
    let mut cumulative = 0;
    for (index, count) in counts.iter().enumerate() {
        cumulative += count;
        let bound = bounds.get(index).map_or("+Inf".to_string(), |bound| bound.to_string());
        let mut bucket_labels = labels.clone();
        bucket_labels.push(("le_us".to_string(), bound));
        family.get_or_create(&bucket_labels).inc_by(cumulative);
    }
}

/// Render snapshots of all cores plus node-wide gauges as Prometheus text.
pub fn render(snapshots: &[MetricsSnapshot], partitions: u64, topics: u64) -> String {
    let mut registry = Registry::with_prefix("rill");
    let requests = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let latency_sum = Family::<Labels, Counter>::default();
    let latency_bucket = Family::<Labels, Counter>::default();
    let bytes_in = Family::<Labels, Counter>::default();
    let bytes_out = Family::<Labels, Counter>::default();
    let mesh = Family::<Labels, Counter>::default();
    let connections = Family::<Labels, Gauge>::default();
    let rejected = Family::<Labels, Counter>::default();
    let refused = Family::<Labels, Counter>::default();
    let timed_out = Family::<Labels, Counter>::default();
    let reads_paused = Family::<Labels, Counter>::default();
    let reads_paused_us = Family::<Labels, Counter>::default();
    let log_bytes = Family::<Labels, Gauge>::default();
    let fdatasyncs = Family::<Labels, Counter>::default();
    let zeroed = Family::<Labels, Counter>::default();
    let cache_hits = Family::<Labels, Counter>::default();
    let cache_misses = Family::<Labels, Counter>::default();
    let failed = Family::<Labels, Gauge>::default();
    let storage_latency_bucket = Family::<Labels, Counter>::default();
    let storage_latency_sum = Family::<Labels, Counter>::default();
    let storage_latency_max = Family::<Labels, Gauge>::default();
    for snapshot in snapshots {
        for (call, latency) in [("fdatasync", &snapshot.storage.fdatasync_latency), ("fallocate", &snapshot.storage.preallocate_latency), ("write", &snapshot.storage.write_latency)] {
            let labels = vec![("core".to_string(), snapshot.core.to_string()), ("call".to_string(), call.to_string())];
            storage_latency_sum.get_or_create(&labels).inc_by(latency.nanos_sum / 1_000);
            storage_latency_max.get_or_create(&labels).set(i64::try_from(latency.nanos_max / 1_000).unwrap_or(i64::MAX));
            add_buckets(&storage_latency_bucket, &labels, &rill_engine::IO_LATENCY_BUCKETS_US, &latency.buckets);
        }
        let core = vec![("core".to_string(), snapshot.core.to_string())];
        bytes_in.get_or_create(&core).inc_by(snapshot.bytes_in);
        bytes_out.get_or_create(&core).inc_by(snapshot.bytes_out);
        mesh.get_or_create(&core).inc_by(snapshot.mesh_messages_sent);
        connections.get_or_create(&core).set(i64::try_from(snapshot.connections_open).unwrap_or(i64::MAX));
        rejected.get_or_create(&core).inc_by(snapshot.connections_rejected);
        refused.get_or_create(&core).inc_by(snapshot.connections_refused);
        timed_out.get_or_create(&core).inc_by(snapshot.connections_timed_out);
        reads_paused.get_or_create(&core).inc_by(snapshot.reads_paused);
        reads_paused_us.get_or_create(&core).inc_by(snapshot.reads_paused_us);
        log_bytes.get_or_create(&core).set(i64::try_from(snapshot.storage.log_bytes).unwrap_or(i64::MAX));
        fdatasyncs.get_or_create(&core).inc_by(snapshot.storage.fdatasyncs());
        zeroed.get_or_create(&core).inc_by(snapshot.storage.bytes_zeroed);
        cache_hits.get_or_create(&core).inc_by(snapshot.storage.cache_hits);
        cache_misses.get_or_create(&core).inc_by(snapshot.storage.cache_misses);
        failed.get_or_create(&core).set(i64::try_from(snapshot.failed_partitions).unwrap_or(i64::MAX));
        for (api, counters) in &snapshot.apis {
            let labels = vec![("api".to_string(), api.to_string())];
            requests.get_or_create(&labels).inc_by(counters.requests);
            failures.get_or_create(&labels).inc_by(counters.failures);
            latency_sum.get_or_create(&labels).inc_by(counters.latency_us_sum);
            add_buckets(&latency_bucket, &labels, &LATENCY_BUCKETS_US, &counters.latency_buckets);
        }
    }
    registry.register("requests", "Kafka requests served", requests);
    registry.register("request_failures", "Kafka requests answered with an error", failures);
    registry.register("request_latency_us_sum", "Sum of request latencies in microseconds", latency_sum);
    registry.register("request_latency_us_bucket", "Requests at or below each latency bound (cumulative)", latency_bucket);
    registry.register("bytes_in", "Record bytes appended", bytes_in);
    registry.register("bytes_out", "Record bytes served to fetchers", bytes_out);
    registry.register("mesh_messages", "Requests sent to other cores over the mesh", mesh);
    registry.register("connections_open", "Open Kafka connections", connections);
    registry.register("connections_rejected", "Connections closed for bad framing or requests", rejected);
    registry.register("connections_refused", "Connections refused at the connection limit", refused);
    registry.register("connections_timed_out", "Connections closed for idling or for a request past its deadline", timed_out);
    registry.register(
        "connection_reads_paused",
        "Times a connection stopped reading at its limit of requests in flight (requests then wait in the socket, outside the request latency histogram)",
        reads_paused,
    );
    registry.register("connection_reads_paused_us", "Microseconds connections spent paused at that limit", reads_paused_us);
    registry.register("log_bytes", "Bytes held by the partition logs of each core", log_bytes);
    registry.register("fdatasyncs", "fdatasync calls issued by the partition logs of each core", fdatasyncs);
    registry.register("zeroed_bytes", "Bytes of zeros written ahead of the partition logs' ends", zeroed);
    registry.register("batch_cache_hits", "Reads served from the batch cache", cache_hits);
    registry.register("batch_cache_misses", "Reads that went to disk", cache_misses);
    registry.register("storage_latency_us_bucket", "Storage calls (fdatasync, fallocate, write) at or below each latency bound (cumulative)", storage_latency_bucket);
    registry.register("storage_latency_us_sum", "Sum of storage call latencies in microseconds", storage_latency_sum);
    registry.register("storage_latency_us_max", "Slowest storage call in microseconds", storage_latency_max);
    registry.register("failed_partitions", "Partitions that failed or refused to open", failed);
    let partitions_gauge = Gauge::<i64>::default();
    partitions_gauge.set(i64::try_from(partitions).unwrap_or(i64::MAX));
    registry.register("partitions", "Partitions on this node", partitions_gauge);
    let topics_gauge = Gauge::<i64>::default();
    topics_gauge.set(i64::try_from(topics).unwrap_or(i64::MAX));
    registry.register("topics", "Topics on this node", topics_gauge);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_summed_counters() {
        let metrics = CoreMetrics::default();
        metrics.record_request("Produce", Duration::from_micros(80), false);
        metrics.record_request("Produce", Duration::from_millis(2), true);
        metrics.bytes_in.set(100);
        let mut second = metrics.snapshot(1);
        second.storage.fdatasync_latency.record(Duration::from_micros(80));
        second.storage.fdatasync_latency.record(Duration::from_millis(30));
        second.storage.write_latency.record(Duration::from_micros(140_000));
        second.storage.log_bytes = 4096;
        second.storage.bytes_zeroed = 8192;
        second.reads_paused = 3;
        second.reads_paused_us = 4500;
        let text = render(&[metrics.snapshot(0), second], 6, 1);
        assert!(text.contains("rill_fdatasyncs_total{core=\"1\"} 2"), "{text}");
        assert!(text.contains("rill_zeroed_bytes_total{core=\"1\"} 8192"), "{text}");
        assert!(text.contains("rill_storage_latency_us_bucket_total{core=\"1\",call=\"fdatasync\",le_us=\"100\"} 1"), "{text}");
        assert!(text.contains("rill_storage_latency_us_bucket_total{core=\"1\",call=\"fdatasync\",le_us=\"50000\"} 2"), "{text}");
        assert!(text.contains("rill_storage_latency_us_max{core=\"1\",call=\"fdatasync\"} 30000"), "{text}");
        assert!(text.contains("rill_storage_latency_us_max{core=\"1\",call=\"write\"} 140000"), "{text}");
        assert!(text.contains("rill_log_bytes{core=\"1\"} 4096"), "{text}");
        assert!(text.contains("rill_connection_reads_paused_total{core=\"1\"} 3"), "{text}");
        assert!(text.contains("rill_connection_reads_paused_us_total{core=\"1\"} 4500"), "{text}");
        assert!(text.contains("rill_requests_total{api=\"Produce\"} 4"), "{text}");
        assert!(text.contains("rill_bytes_in_total{core=\"1\"} 100"), "{text}");
        assert!(text.contains("rill_partitions 6"), "{text}");
        assert!(text.contains("le_us=\"100\"} 2"), "{text}");
    }
}
