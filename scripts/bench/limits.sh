#!/usr/bin/env bash
# The machine's physical limits, measured in the same sitting as our benchmarks.
#   disk (fio, O_DIRECT, on the data disk under target/): sequential write and read bandwidth at
#   1 MiB (queue depth 8, io_uring); 4 KiB durable-write latency percentiles at queue depth 1,
#   both as O_DSYNC writes (one durable write per I/O) and as write + fdatasync;
#   loopback: TCP bandwidth (iperf3) and TCP round trip (sockperf ping-pong, 64 B).
# Writes JSON to target/bench/limits.json (or $1) and prints it.
#   LIMITS_QUICK=1  shorter runs
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench/limits.json}
mkdir -p "$(dirname "$out")" target/bench/fio
need=()
for p in fio iperf3 sockperf jq; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
runtime=${LIMITS_QUICK:+3}; runtime=${runtime:-10}
dir=target/bench/fio
rm -f "$dir"/*
# Commit the deletions (and, with a `discard` mount, their discards) before anything is timed.
sync -f "$dir"

fio_json() { fio --output-format=json --directory="$dir" --name=limits "$@" 2>/dev/null; }

seq_write=$(fio_json --rw=write --bs=1M --direct=1 --ioengine=io_uring --iodepth=8 --size=2G --end_fsync=1 --filename=seq.dat |
  jq '.jobs[0].write.bw_bytes')
seq_read=$(fio_json --rw=read --bs=1M --direct=1 --ioengine=io_uring --iodepth=8 --size=2G --filename=seq.dat |
  jq '.jobs[0].read.bw_bytes')
rm -f "$dir/seq.dat"
sync -f "$dir"
# 4 KiB durable writes at queue depth 1 into a preallocated file, time-bounded.
dsync=$(fio_json --rw=write --bs=4k --direct=1 --sync=dsync --ioengine=psync --size=256M --runtime="$runtime" \
  --time_based --filename=dsync.dat --percentile_list=50:90:99:99.9 |
  jq '.jobs[0].write.clat_ns.percentile | {p50_us: (.["50.000000"]/1000), p90_us: (.["90.000000"]/1000), p99_us: (.["99.000000"]/1000), p999_us: (.["99.900000"]/1000)}')
fdatasync=$(fio_json --rw=write --bs=4k --direct=1 --fdatasync=1 --ioengine=io_uring --size=256M --runtime="$runtime" \
  --time_based --filename=fds.dat --percentile_list=50:90:99:99.9 |
  jq '{write: (.jobs[0].write.clat_ns.percentile | {p50_us: (.["50.000000"]/1000), p99_us: (.["99.000000"]/1000)}),
       fdatasync: (.jobs[0].sync.lat_ns.percentile | {p50_us: (.["50.000000"]/1000), p99_us: (.["99.000000"]/1000), p999_us: (.["99.900000"]/1000)}),
       iops: .jobs[0].write.iops}')
rm -f "$dir"/*.dat

# Loopback TCP.
iperf3 -s -1 -B 127.0.0.1 -p 5399 >/dev/null 2>&1 & srv=$!
sleep 0.5
tcp_bw=$(iperf3 -c 127.0.0.1 -p 5399 -t "${LIMITS_QUICK:+2}${LIMITS_QUICK:-5}" -J | jq '.end.sum_received.bits_per_second')
wait "$srv" 2>/dev/null || true
sockperf server --tcp -i 127.0.0.1 -p 5398 >/dev/null 2>&1 & srv=$!
sleep 0.5
rtt=$(sockperf ping-pong --tcp -i 127.0.0.1 -p 5398 -m 64 -t "${LIMITS_QUICK:+2}${LIMITS_QUICK:-5}" --full-rtt 2>&1 |
  awk '/percentile 50.000/ {p50=$NF} /percentile 99.000/ {p99=$NF} /percentile 99.900/ {p999=$NF} END {printf "{\"p50_us\": %s, \"p99_us\": %s, \"p999_us\": %s}", p50, p99, p999}')
kill "$srv" 2>/dev/null || true
wait "$srv" 2>/dev/null || true

jq -n --arg date "$(date -u +%FT%TZ)" --arg host "$(uname -srm)" --arg cpus "$(nproc)" \
  --argjson sw "$seq_write" --argjson sr "$seq_read" --argjson dsync "$dsync" --argjson fds "$fdatasync" \
  --argjson tcp "$tcp_bw" --argjson rtt "$rtt" '{
    date: $date, kernel: $host, cpus: ($cpus|tonumber),
    disk: {seq_write_1m_qd8_bytes_per_s: $sw, seq_read_1m_qd8_bytes_per_s: $sr,
           write_4k_dsync_qd1: $dsync, write_4k_then_fdatasync_qd1: $fds},
    loopback: {tcp_bits_per_s: $tcp, tcp_rtt_64b: $rtt}}' | tee "$out"
