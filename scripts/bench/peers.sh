#!/usr/bin/env bash
# Rill beside its peers: same sitting, same machine, same workloads, same harness and pacing.
#
#   Kafka-protocol brokers (Rill, tansu) are driven by librdkafka (`rill bench --client librdkafka`);
#   Redis Streams and NATS JetStream by rill-bench's own small protocol clients (pipelined XADD /
#   XREAD BLOCK; JetStream publish-with-ack and push consumers), with the same open-loop schedule,
#   warm-up, histograms and JSON results. `rill-kw` is Rill again, driven by rill-bench's own
#   Kafka client of the same shape as the Redis and NATS ones (`--client kafka-wire`), so Rill is
#   also set beside those peers with a client like theirs.
#
#   Workloads (1 producer, 1 consumer, 1 partition/stream, 100-byte records, acks=all):
#     max   closed loop, 10,000 records in flight, librdkafka linger.ms=5: throughput
#     produce  max with the producer alone (no consumer), for the Kafka-protocol brokers only;
#           once per round, and the report takes each system's run of median throughput
#     rate  open loop at 50,000 records/s, linger.ms=0: produce-ack and end-to-end latency
#           (coordinated omission corrected); PEERS_ROUNDS rounds, the systems taking turns in
#           each round, and the report gives each percentile's median over the rounds
#
#   Systems and their durability (written beside every figure):
#     rill            rill serve --cores 1 --storage disk --durability fsync (direct-I/O engine;
#                     acknowledged after fdatasync)
#     rill-kw         rill as above (fsync), measured with `--client kafka-wire`
#     rill-kw-write   rill --durability write (acknowledged once the O_DIRECT write completed;
#                     fdatasync every second), `--client kafka-wire`: the class of redis-everysec
#     rill-kw-buffered  rill --durability write --segment-io buffered (acknowledged once the page
#                     cache holds it; fdatasync every second), `--client kafka-wire`: like
#                     redis-everysec, whose appends also land in the page cache
#     rill-kw-buffered-fsync  rill --durability fsync --segment-io buffered, `--client kafka-wire`
#                     (not in the default list): the appends' writes land in the page cache and
#                     each group commit's fdatasync writes them back, as redis-always's does
#     rill-memory     rill serve --cores 1 --storage memory (no durability), 4 GiB store
#     tansu-sqlite    tansu 0.6.0, sqlite:// engine (WAL, synchronous=NORMAL: no fsync per commit)
#     tansu-memory    tansu 0.6.0, memory:// engine (no durability)
#     nats-file       nats-server (Debian) JetStream, file storage, defaults (no fsync per message)
#     redis-always    redis-server (Debian) Streams, appendonly yes, appendfsync always
#     redis-everysec  redis-server (Debian) Streams, appendonly yes, appendfsync everysec
#
# Placement, every system alike: its server pinned (`taskset -c`) to the CPU that takes the data
# disk's interrupts (PEERS_SERVER_CPU to choose another), the load generator to another CPU.
#
# Output: target/bench/peers/<stamp>/ (JSON, PNG, limits.json, table.md); the table and plots are
# also written into docs/BENCHMARKS.md under "## Rill and its peers" (that section only).
#
# Environment:
#   PEERS_DURATION=10s   measured time per run        PEERS_WARMUP=2s   warm-up per run
#   PEERS_RATE=50000     open-loop rate               PEERS_PAIRS=3     Rill/tansu A-B pairs (0: none)
#   PEERS_ROUNDS=3       rate-workload rounds (systems alternate within each round)
#   PEERS_TICK_US=50     open loop: the generator wakes at most once per this many µs (every
#                        system alike; latency still counts from each record's intended time)
#   PEERS_ONLY="rill redis-always"  subset of systems PEERS_NO_DOCS=1   do not touch docs/BENCHMARKS.md
#   PEERS_QUICK=1        2 s runs, quick limits (a smoke test of the script, not figures to publish)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

duration=${PEERS_DURATION:-10s}
warmup=${PEERS_WARMUP:-2s}
rate=${PEERS_RATE:-50000}
pairs=${PEERS_PAIRS:-3}
tick_us=${PEERS_TICK_US:-50}
rounds=${PEERS_ROUNDS:-3}
if [ "${PEERS_QUICK:-0}" = 1 ]; then
  duration=2s; warmup=1s; pairs=${PEERS_PAIRS:-1}; rounds=${PEERS_ROUNDS:-1}; export LIMITS_QUICK=1
fi
systems=${PEERS_ONLY:-"rill rill-kw rill-kw-write rill-kw-buffered rill-memory tansu-sqlite tansu-memory nats-file redis-always redis-everysec"}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/target/bench/peers/$stamp
mkdir -p "$out"
printf 'started=%s\ncommit=%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(git rev-parse --short HEAD)" >"$out/meta.txt"
log() { printf '\n=== %s ===\n' "$*" >&2; }

# Every server we start is recorded here and stopped by its PID on exit.
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# --- tools ----------------------------------------------------------------------------------
need=()
for p in nats-server redis-server curl cmake libcurl4-openssl-dev libsasl2-dev libssl-dev jq fonts-dejavu-core; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
tansu=$root/target/peers/bin/tansu
if [[ " $systems " == *" tansu-"* ]] && [ ! -x "$tansu" ]; then
  log "installing tansu 0.6.0 into target/peers (about 8 minutes of CPU)"
  timeout 45m cargo install tansu --version 0.6.0 --locked --features dynostore,libsql \
    --root "$root/target/peers" --target-dir "$root/target/peers/build" >"$out/tansu-install.log" 2>&1
fi
log "building rill and rill-bench (release)"
timeout 40m cargo build --release -p rill -p rill-bench --bin rill --bin rill-bench >"$out/build.log" 2>&1
rill=$root/target/release/rill
bench=$root/target/release/rill-bench

# --- machine --------------------------------------------------------------------------------
log "machine limits (scripts/bench/limits.sh)"
timeout 10m scripts/bench/limits.sh "$out/limits.json" >/dev/null
# Deleting files frees blocks; on a disk mounted with `discard` (this VM's root is) the discards
# then stall other writes for up to ~100 ms. Let the ones of limits.sh's test files pass first.
sync; sleep 10
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# shellcheck source=common.sh
. scripts/bench/common.sh
# Placement, the same for every system: the server (all its threads) on one CPU, by default the
# one that takes the data disk's interrupts, so the completions a server waits for arrive on its
# own CPU; the load generator on another CPU, spared them.
server_cpu=${PEERS_SERVER_CPU:-$(disk_irq_cpu "$out")}
bench_cpu=$(other_cpu "$server_cpu")
printf 'server_cpu=%s\nbench_cpu=%s\n' "$server_cpu" "$bench_cpu" >>"$out/meta.txt"
wait_port() { # wait_port PORT PID: until something listens, at most 60 s
  for _ in $(seq 1 600); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_system NAME DIR -> sets: port, pid, client, durability, admin (Rill's admin port, else empty)
start_system() {
  local name=$1 dir=$2
  port=$(free_port); admin=
  mkdir -p "$dir"
  case $name in
    rill|rill-kw|rill-kw-write|rill-kw-buffered|rill-kw-buffered-fsync|rill-memory)
      local storage=(--storage disk --durability fsync)
      [ "$name" = rill-kw-write ] && storage=(--storage disk --durability write)
      [ "$name" = rill-kw-buffered ] && storage=(--storage disk --durability write --segment-io buffered)
      [ "$name" = rill-kw-buffered-fsync ] && storage=(--storage disk --durability fsync --segment-io buffered)
      if [ "$name" = rill-memory ]; then
        # The in-memory store refuses appends past its budget (1 GiB per core by default).
        echo "memory_store_mib_per_core = 4096" >"$dir/rill.toml"
        storage=(--storage memory --config "$dir/rill.toml")
      fi
      admin=$(free_port)
      taskset -c "$server_cpu" "$rill" serve --cores 1 --auto-create-topics --kafka-listen "127.0.0.1:$port" "${storage[@]}" \
        --admin-listen "127.0.0.1:$admin" --data-dir "$dir/data" >"$dir/server.log" 2>&1 &
      pid=$!; client=librdkafka
      [[ "$name" = rill-kw* ]] && client=kafka-wire ;;
    tansu-sqlite|tansu-memory)
      # tansu resolves a sqlite:// path against its working directory, so keep it relative.
      local engine="sqlite://tansu.db"
      [ "$name" = tansu-memory ] && engine="memory://tansu/"
      (cd "$dir" && exec taskset -c "$server_cpu" "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$engine") >"$dir/server.log" 2>&1 &
      pid=$!; client=librdkafka ;;
    nats-file)
      taskset -c "$server_cpu" nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir/js" >"$dir/server.log" 2>&1 &
      pid=$!; client=nats-jetstream ;;
    redis-always|redis-everysec)
      taskset -c "$server_cpu" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly yes \
        --appendfsync "${name#redis-}" --dir "$dir" >"$dir/server.log" 2>&1 &
      pid=$!; client=redis-streams ;;
    *) echo "unknown system $name" >&2; return 1 ;;
  esac
  pids+=("$pid")
  wait_port "$port" "$pid" || { echo "$name did not start:" >&2; tail -20 "$dir/server.log" >&2; return 1; }
  sleep 0.5
  case $name in
    rill|rill-kw) durability="direct-I/O engine, --durability fsync (acknowledged after fdatasync)" ;;
    rill-kw-write) durability="direct-I/O engine, --durability write (acknowledged once written; fdatasync every 1 s)" ;;
    rill-kw-buffered-fsync) durability="engine on buffered files, --durability fsync --segment-io buffered (acknowledged after fdatasync)" ;;
    rill-kw-buffered) durability="engine on buffered files, --durability write --segment-io buffered (acknowledged once in the page cache; fdatasync every 1 s)" ;;
    rill-memory) durability="--storage memory (no durability)" ;;
    tansu-sqlite) durability="sqlite:// engine (WAL, synchronous=NORMAL)" ;;
    tansu-memory) durability="memory:// engine (no durability)" ;;
    nats-file) durability="JetStream file storage, nats-server $(nats-server --version | awk '{print $NF}') defaults (no fsync per message)" ;;
    redis-always) durability="AOF, appendfsync always (fsync before reply)" ;;
    redis-everysec) durability="AOF, appendfsync everysec" ;;
  esac
}

stop_system() { stop_pid "$pid"; }

common=(--warmup "$warmup" --duration "$duration" --record-size 100 --partitions 1 --producers 1
        --acks all --quiet --out "$out")
workload_args() { # workload_args max|produce|rate
  case $1 in
    max) echo "--max --in-flight 10000 --linger-ms 5 --consumers 1" ;;
    produce) echo "--max --in-flight 10000 --linger-ms 5 --consumers 0" ;;
    rate) echo "--rate $rate --tick-us $tick_us --linger-ms 0 --consumers 1" ;;
  esac
}

# --- runs -----------------------------------------------------------------------------------
: >"$out/commands.txt"
doomed=()
# run_one SYSTEM WORKLOAD NAME: a fresh server (and data directory) for one run; no run inherits
# another's data.
run_one() {
  local system=$1 w=$2 name=$3
  # Each run starts with no dirty page cache left by the one before (nats-file, for one, leaves
  # ~60 MB unsynced per run, which the kernel would write back during the next system's run).
  sync
  if ! start_system "$system" "$out/$name"; then echo "SKIPPED: $name did not start" >&2; return 0; fi
  [ "$w" = max ] && echo "$system|$durability" >>"$out/durability.txt"
  # shellcheck disable=SC2046
  cmd=(taskset -c "$bench_cpu" "$bench" --client "$client" --brokers "127.0.0.1:$port" $(workload_args "$w") "${common[@]}"
       --label "$system" --name "$name")
  echo "${cmd[*]}" | sed "s#$root/##g" >>"$out/commands.txt"
  if ! timeout 5m "${cmd[@]}" >"$out/$name.txt" 2>&1; then
    echo "FAILED: $name" >&2; tail -5 "$out/$name.txt" >&2
  fi
  # Rill's own account of the run (its storage calls' slowest and their histograms), so a tail
  # can be traced to the disk or away from it. The server started fresh for this run, so this
  # covers its warm-up too.
  [ -n "$admin" ] && { curl -sf --max-time 5 "127.0.0.1:$admin/metrics" >"$out/$name.metrics" || true; }
  stop_system
  # Data is deleted only after the last run (see the note on discards above).
  doomed+=("$out/$name/data" "$out/$name/js" "$out/$name"/*.db* "$out/$name"/appendonly*)
}
for system in $systems; do
  log "$system: max"
  run_one "$system" max "$system-max"
done
# The latency workload in rounds, the systems taking turns within each: a minute of a noisy
# machine then lands on every system alike, and no single run decides a tail percentile.
# Each round also runs the Kafka-protocol brokers' max workload with the producer alone on the
# client (with a consumer, a broker whose consumer falls behind leaves its producer the client
# CPU the consumer did not use), so that verdict rests on every round too: single runs of one
# build move by ±15% on this machine (docs/BENCHMARKS.md, session 11).
for round in $(seq 1 "$rounds"); do
  for system in $systems; do
    log "$system: rate, round $round of $rounds"
    run_one "$system" rate "$system-rate-r$round"
  done
  for system in $systems; do
    case $system in
      rill|tansu-sqlite|tansu-memory)
        log "$system: produce only, round $round of $rounds"
        run_one "$system" produce "$system-produce-r$round" ;;
    esac
  done
done
# Each system's run of median end-to-end p99.9 stands for it in the plots ($system-rate.json);
# the report takes every percentile's median over all rounds. Its producer-alone run of median
# throughput stands for it in the report ($system-produce.json).
for system in $systems; do
  python3 - "$out" "$system" <<'PY'
import glob, json, shutil, sys
out, system = sys.argv[1:]

def keep_median(workload, measure):
    """Copies the run of median `measure` among $system-$workload-r*.json to $system-$workload.json."""
    runs = []
    for path in sorted(glob.glob(f"{out}/{system}-{workload}-r*.json")):
        try:
            value = measure(json.load(open(path)))
        except (OSError, ValueError):
            continue
        if value is not None:
            runs.append((value, path))
    if runs:
        runs.sort()
        shutil.copy(runs[(len(runs) - 1) // 2][1], f"{out}/{system}-{workload}.json")

keep_median("rate", lambda r: r["end_to_end"]["latency"]["p999_us"] if r.get("end_to_end") else None)
keep_median("produce", lambda r: r["produce"]["records_per_s"] if r.get("produce") else None)
PY
done

# Rill and tansu (sqlite) alternately, A B A B, for the throughput ratio on a noisy machine.
if [ "$pairs" -gt 0 ] && [[ " $systems " == *" rill "* ]] && [[ " $systems " == *" tansu-sqlite "* ]]; then
  log "A/B pairs: rill vs tansu-sqlite"
  if start_system rill "$out/ab-rill"; then
    rill_port=$port; rill_pid=$pid
    if start_system tansu-sqlite "$out/ab-tansu"; then
      cmd=(taskset -c "$bench_cpu" "$bench" --brokers "127.0.0.1:$rill_port" --compare "127.0.0.1:$port" --pairs "$pairs"
           --label rill --compare-label tansu-sqlite --max --in-flight 10000 --linger-ms 5 --consumers 1 "${common[@]}"
           --name compare-rill-tansu-sqlite)
      echo "${cmd[*]}" | sed "s#$root/##g" >>"$out/commands.txt"
      timeout 10m "${cmd[@]}" >"$out/compare.txt" 2>&1 || { echo "FAILED: compare" >&2; tail -5 "$out/compare.txt" >&2; }
      stop_system
    fi
    pid=$rill_pid; stop_system
  fi
  doomed+=("$out/ab-rill/data" "$out/ab-tansu"/*.db*)
fi
rm -rf "${doomed[@]}"

# Combined plots of every system that produced a result.
for w in rate max; do
  files=(); for s in $systems; do [ -f "$out/$s-$w.json" ] && files+=("$out/$s-$w.json"); done
  ((${#files[@]})) && "$bench" --plot-from "${files[@]}" --plot-latency end-to-end --out "$out" --name "all-$w-e2e" >/dev/null
  ((${#files[@]})) && "$bench" --plot-from "${files[@]}" --plot-latency produce --out "$out" --name "all-$w-produce" >/dev/null
done

# --- report ---------------------------------------------------------------------------------
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 "$root/scripts/bench/peers_report.py" --dir "$out" --systems "$systems" --load-before "$load_before" \
  --load-after "$load_after" --rate "$rate" --tick-us "$tick_us" --duration "$duration" --warmup "$warmup" \
  --rounds "$rounds" >"$out/table.md"
cat "$out/table.md"
if [ "${PEERS_NO_DOCS:-0}" != 1 ] && [ "${PEERS_QUICK:-0}" != 1 ]; then
  mkdir -p docs/bench
  for f in "$out"/all-*.png "$out"/compare-*.png; do [ -f "$f" ] && cp "$f" docs/bench/peers-"$(basename "$f")"; done
  python3 "$root/scripts/bench/peers_report.py" --splice docs/BENCHMARKS.md --section "## Rill and its peers" \
    --from "$out/table.md"
  log "docs/BENCHMARKS.md updated (section '## Rill and its peers')"
fi
