#!/usr/bin/env bash
# End-to-end latency of one Rill broker at a fixed rate, run after run, with the broker's own view
# of each run beside the client's: the table behind docs/BENCHMARKS.md's "End-to-end latency at
# 50,000 records/s".
#
#   The broker runs on one core (`rill serve --cpus $E2E_BROKER_CPU`) and the load generator is
#   pinned to another CPU, so they do not share a CPU with each other (they still share the
#   machine's disk, and loopback's softirq). Every run gets a fresh broker and data directory; data is
#   deleted only after the last run (deleting files on a disk mounted with `discard` stalls later
#   writes for tens of milliseconds).
#
# Environment:
#   E2E_RUNS=3          runs               E2E_RATE=50000     records/s
#   E2E_DURATION=10s    measured per run   E2E_TICK_US=50     generator tick (`rill bench --tick-us`)
#   E2E_BROKER_ARGS="--durability fsync"   extra `rill serve` flags (e.g. "--storage memory")
#   E2E_CLIENT=librdkafka                  `rill bench --client` (librdkafka or kafka-wire)
#   E2E_RILL=target/release/rill           the broker binary (another build, for A/B pairs)
#   E2E_BROKER_CPU      the broker's CPU (`rill serve --cpus`); default: the CPU that takes the data
#                       disk's interrupts (its completions are then local; the generator is spared them)
# Output: target/bench/e2e/<stamp>/ (JSON and PNG per run, broker metrics, table.md), table printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
runs=${E2E_RUNS:-3}
rate=${E2E_RATE:-50000}
duration=${E2E_DURATION:-10s}
tick_us=${E2E_TICK_US:-50}
broker_args=${E2E_BROKER_ARGS:-"--durability fsync"}
client=${E2E_CLIENT:-librdkafka}
out=target/bench/e2e/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

timeout 40m cargo build --release -p rill -p rill-bench --bin rill --bin rill-bench >"$out/build.log" 2>&1
rill=${E2E_RILL:-$root/target/release/rill}
bench=$root/target/release/rill-bench
# shellcheck source=common.sh
. scripts/bench/common.sh
broker_cpu=${E2E_BROKER_CPU:-$(disk_irq_cpu "$root/target")}
bench_cpu=$(other_cpu "$broker_cpu")
metric() { # metric FILE NAME{labels}: the value of one exact series, 0 when absent
  awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }' "$1"
}

pid=
stop_broker() {
  [ -n "$pid" ] || return 0
  stop_pid "$pid"
  pid=
}
trap stop_broker EXIT

{
  echo "| run | end-to-end p50 / p99 / p99.9 / max µs | produce-ack p99 µs | generator lag p99.9 µs | broker write max µs | fdatasync max µs | fallocate calls, max µs | reads paused (times, ms) |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out/table.md"
for run in $(seq 1 "$runs"); do
  dir=$out/run-$run
  mkdir -p "$dir"
  port=$(free_port)
  admin=$(free_port)
  # shellcheck disable=SC2086
  "$rill" serve --cpus "$broker_cpu" --auto-create-topics --kafka-listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --data-dir "$dir/data" $broker_args >"$dir/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$admin/health" >/dev/null 2>&1 && break; sleep 0.1; done
  cmd=(taskset -c "$bench_cpu" "$bench" --client "$client" --brokers "127.0.0.1:$port" --rate "$rate" --tick-us "$tick_us"
       --duration "$duration" --warmup 2s --record-size 100 --partitions 1 --producers 1 --consumers 1
       --acks all --linger-ms 0 --quiet --out "$dir" --name "run-$run")
  echo "${cmd[*]}" | sed "s#$root/##g" >>"$out/commands.txt"
  timeout 5m "${cmd[@]}" >"$dir/bench.txt" 2>&1 || { echo "run $run failed:" >&2; tail -5 "$dir/bench.txt" >&2; }
  curl -sf "127.0.0.1:$admin/metrics" >"$dir/metrics.txt" || true
  stop_broker
  m=$dir/metrics.txt
  python3 - "$dir/run-$run.json" "$run" \
    "$(metric "$m" 'rill_storage_latency_us_max{core="0",call="write"}')" \
    "$(metric "$m" 'rill_storage_latency_us_max{core="0",call="fdatasync"}')" \
    "$(metric "$m" 'rill_storage_latency_us_bucket_total{core="0",call="fallocate",le_us="+Inf"}')" \
    "$(metric "$m" 'rill_storage_latency_us_max{core="0",call="fallocate"}')" \
    "$(metric "$m" 'rill_connection_reads_paused_total{core="0"}')" \
    "$(metric "$m" 'rill_connection_reads_paused_us_total{core="0"}')" >>"$out/table.md" <<'EOF'
import json, sys
path, run, write_max, sync_max, falloc_count, falloc_max, paused, paused_us = sys.argv[1:]
try:
    result = json.load(open(path))
except (OSError, ValueError):
    print(f"| {run} | failed | | | | | | |")
    sys.exit(0)
def pct(latency, key):
    return f"{latency[key]:,.0f}"
e2e = result["end_to_end"]["latency"]
ack = result["produce"]["latency"]
lag = result["produce"]["generator_lag"]
print(f"| {run} | {pct(e2e, 'p50_us')} / {pct(e2e, 'p99_us')} / {pct(e2e, 'p999_us')} / {pct(e2e, 'max_us')} "
      f"| {pct(ack, 'p99_us')} | {pct(lag, 'p999_us')} | {int(float(write_max)):,} | {int(float(sync_max)):,} "
      f"| {int(float(falloc_count)):,}, {int(float(falloc_max)):,} "
      f"| {int(float(paused)):,}, {float(paused_us) / 1000:,.1f} |")
EOF
done
rm -rf "$out"/run-*/data
echo "rate $rate records/s, tick $tick_us µs, broker flags: $broker_args, broker on CPU $broker_cpu, generator on CPU $bench_cpu, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC')"
cat "$out/table.md"
