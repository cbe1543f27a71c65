#!/usr/bin/env python3
"""Turns a peers.sh result directory into the markdown of docs/BENCHMARKS.md's
"## Rill and its peers" section, or splices such markdown into a file (that section only).

Every figure printed here is read from a JSON result written by rill-bench in the same sitting;
nothing is computed except ratios (Rill / peer) and unit conversions.
"""
import argparse
import glob
import json
import statistics
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

SECTION = "## Rill and its peers"
# A rate run that acknowledged less than this share of the offered rate could not keep up.
SATURATED_SHARE = 0.95


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{digits}f}"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB RAM"


def limits_table(limits):
    if not limits:
        return "(limits.sh produced no result)\n"
    d, l = limits["disk"], limits["loopback"]
    fds = d["write_4k_then_fdatasync_qd1"]["fdatasync"]
    dsync = d["write_4k_dsync_qd1"]
    rtt = l["tcp_rtt_64b"]
    return (
        "| O_DIRECT seq write 1 MiB qd8 | seq read | 4 KiB O_DSYNC write p50 / p99 / p99.9 | fdatasync after 4 KiB write p50 / p99 / p99.9 | loopback TCP | TCP RTT 64 B p50 / p99 / p99.9 |\n"
        "|---|---|---|---|---|---|\n"
        f"| {d['seq_write_1m_qd8_bytes_per_s'] / 1e9:.2f} GB/s | {d['seq_read_1m_qd8_bytes_per_s'] / 1e9:.2f} GB/s "
        f"| {dsync['p50_us']:.0f} / {dsync['p99_us']:.0f} / {dsync['p999_us']:.0f} µs "
        f"| {fds['p50_us']:.0f} / {fds['p99_us']:.0f} / {fds['p999_us']:.0f} µs "
        f"| {l['tcp_bits_per_s'] / 1e9:.1f} Gbit/s | {rtt['p50_us']} / {rtt['p99_us']} / {rtt['p999_us']} µs |\n"
    )


def acked(result):
    """Records per second the run's producers had acknowledged in the measured window (None
    without a run)."""
    return result and result["produce"]["records_per_s"]


def delivered(result):
    """Records per second the run's consumers read in the measured window (None without a run)."""
    if not result:
        return None
    e2e = result.get("end_to_end")
    return e2e["records_per_s"] if e2e else 0.0


def lat(result, side, key):
    if not result:
        return None
    part = result["produce"] if side == "produce" else result.get("end_to_end")
    return part["latency"][key] if part else None


class Rounds:
    """The rate workload's rounds of one system: each percentile's median over them."""

    def __init__(self, runs, paths=None):
        kept = [(r, p) for r, p in zip(runs, paths or [None] * len(runs)) if r]
        self.runs = [r for r, _ in kept]
        # Each kept run's JSON path, so files saved beside it (its /metrics) are found even when
        # an earlier round left no result.
        self.paths = [p for _, p in kept]

    def __bool__(self):
        return bool(self.runs)

    def lat(self, side, key):
        values = [v for v in (lat(r, side, key) for r in self.runs) if v is not None]
        return statistics.median(values) if values else None

    def records_per_s(self):
        return statistics.median(r["produce"]["records_per_s"] for r in self.runs) if self.runs else None

    def each(self, side, key):
        return [lat(r, side, key) for r in self.runs]


def storage_max_us(path):
    """Rill's slowest storage call of each kind ({"fdatasync": µs, ...}) from a /metrics scrape
    saved by peers.sh, or None when the run left none (not Rill, or the scrape failed)."""
    try:
        text = open(path).read()
    except OSError:
        return None
    slowest = {}
    for line in text.splitlines():
        if line.startswith("rill_storage_latency_us_max{"):
            labels, _, value = line.rpartition(" ")
            call = labels.split('call="', 1)[1].split('"', 1)[0]
            slowest[call] = max(slowest.get(call, 0), int(float(value)))
    return slowest or None


def storage_table(out, systems, rounds):
    """Per rate round of each Rill system on disk: its end-to-end p99.9 beside its slowest
    fdatasync and write, so a round's tail can be told apart as the disk's or Rill's own."""
    rows = []
    for s in systems:
        if not s.startswith("rill") or s == "rill-memory":
            continue
        cells = []
        for run, path in zip(rounds[s].runs, rounds[s].paths):
            slowest = storage_max_us(path[: -len(".json")] + ".metrics") if path else None
            p999 = lat(run, "e2e", "p999_us")
            if slowest is None or p999 is None:
                cells.append("-")
                continue
            cells.append(f"{p999 / 1000:,.1f} / {slowest.get('fdatasync', 0) / 1000:,.1f} / "
                         f"{slowest.get('write', 0) / 1000:,.1f}")
        if any(c != "-" for c in cells):
            rows.append(f"| {s} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    n = max(len(rounds[s].runs) for s in systems)
    return ["### Rill's slowest storage calls in each rate round\n",
            "End-to-end p99.9 / slowest fdatasync / slowest write, in ms, per round, from the broker's own "
            "`/metrics` (`rill_storage_latency_us_max`) scraped at the end of each run (its warm-up included). "
            "A round whose p99.9 is about its slowest fdatasync or write waited on the disk.\n",
            "| system | " + " | ".join(f"round {i + 1}" for i in range(n)) + " |",
            "|---|" + "---|" * n, *rows, ""]


def rate_rounds(out, system):
    paths = sorted(glob.glob(f"{out}/{system}-rate-r*.json"), key=lambda p: int(p.rsplit("-r", 1)[1][:-5]))
    if not paths and os.path.exists(f"{out}/{system}-rate.json"):
        paths = [f"{out}/{system}-rate.json"]  # a sitting from before rounds existed
    return Rounds([load(p) for p in paths], paths)


def targets(results, rounds, systems, rate):
    """The issue's targets: throughput from this sitting's single max runs, latency from the
    medians of the rate rounds."""
    # Throughput is what the max workload delivered end to end: records read by its consumer
    # per second. A broker whose consumer falls behind its producer cannot sustain the rate it
    # acknowledges (the backlog grows without bound), and on a shared 2-CPU client the producer
    # of such a broker also gets the CPU the consumer leaves idle. The produce-acknowledged
    # figures are printed beside it.
    def tput(s):
        return delivered(results.get((s, "max")))

    def acked_max(s):
        return acked(results.get((s, "max")))

    # The same broker with the producer alone on the client (no consumer to starve or to feed).
    def alone(s):
        return acked(results.get((s, "produce")))

    def at_least(factor, peer):
        """Met when Rill is ahead both by delivered records (with a consumer) and with the
        producer alone (when that run exists)."""
        if not (rill and tput(peer)):
            return None
        ok = rill >= factor * tput(peer)
        if alone("rill") and alone(peer):
            ok = ok and alone("rill") >= factor * alone(peer)
        return ok

    def verdict(ok):
        return "unknown (a run is missing)" if ok is None else ("met" if ok else "**not met**")

    rill, sqlite, memory = tput("rill"), tput("tansu-sqlite"), tput("tansu-memory")
    lines = ["### Against the issue's targets\n"]
    if "tansu-sqlite" in systems:
        ok = at_least(5, "tansu-sqlite")
        lines.append(f"- Rill (fsync) throughput at least 5x tansu sqlite's: {ratio(rill, sqlite)}x by records delivered "
                     f"to the consumer, {ratio(alone('rill'), alone('tansu-sqlite'))}x with the producer alone, "
                     f"{verdict(ok)} (acknowledged with a consumer: {ratio(acked_max('rill'), acked_max('tansu-sqlite'))}x).")
        rp, sp = rounds["rill"].lat("produce", "p99_us"), rounds["tansu-sqlite"].lat("produce", "p99_us")
        ok = None if not (rp and sp) else rp <= sp / 3
        lines.append(f"- Rill p99 produce latency at most 1/3 of tansu sqlite's (rate rounds, medians): ratio {ratio(rp, sp)}, {verdict(ok)}.")
    if "tansu-memory" in systems:
        ok = at_least(1, "tansu-memory")
        lines.append(f"- Rill (fsync) throughput at least tansu in-memory's: {ratio(rill, memory)}x by records delivered "
                     f"to the consumer, {ratio(alone('rill'), alone('tansu-memory'))}x with the producer alone, "
                     f"{verdict(ok)} (acknowledged with a consumer: {ratio(acked_max('rill'), acked_max('tansu-memory'))}x).")
    # Each peer against the Rill configuration that matches it: a client of the peer's kind
    # (librdkafka for tansu; rill-bench's own small clients, kafka-wire for Rill, for Redis and
    # NATS) and the same durability class (an fsync before each acknowledgement for
    # redis-always; acknowledgement before the fsync, with a periodic one, for redis-everysec and
    # nats-file). Rill with fsync is shown beside every peer as well.
    def matched(peer):
        if peer.startswith("tansu"):
            return "rill"
        if peer in ("redis-everysec", "nats-file"):
            # Appends acknowledged from the page cache, as Redis's: buffered files, else direct.
            for mine in ("rill-kw-buffered", "rill-kw-write"):
                if mine in systems:
                    return mine
        return "rill-kw" if "rill-kw" in systems else "rill"

    peers = [s for s in systems if not s.startswith("rill")]
    lines.append(f"- At {int(float(rate)):,} records/s, Rill's p99.9 end-to-end below every peer's (medians of the "
                 "rate rounds; Rill with the same kind of client and the same durability class as the peer):")
    all_ok = True
    for peer in peers:
        mine = matched(peer)
        a, b = rounds[mine].lat("e2e", "p999_us"), rounds[peer].lat("e2e", "p999_us")
        ok = None if a is None or b is None else a < b
        all_ok = all_ok and bool(ok)
        each = [(x, y) for x, y in zip(rounds[mine].each("e2e", "p999_us"), rounds[peer].each("e2e", "p999_us"))
                if x is not None and y is not None]
        won = sum(1 for x, y in each if x < y)
        also = []
        for other in ("rill", "rill-kw"):
            if other != mine and other in systems:
                c = rounds[other].lat("e2e", "p999_us")
                also.append(f"{other} (fsync) {fmt(c)} µs, {'below' if c is not None and b is not None and c < b else 'not below'}")
        lines.append(f"  - {peer}: {mine} {fmt(a)} µs against {fmt(b)} µs, {verdict(ok)} "
                     f"(lower in {won} of {len(each)} rounds" + (f"; {'; '.join(also)}" if also else "") + ").")
    lines.append(f"  - Overall: {verdict(all_ok)}.")
    lines.append("")
    return lines


def report(args):
    out = args.dir
    systems = args.systems.split()
    durability = {}
    if os.path.exists(f"{out}/durability.txt"):
        for line in open(f"{out}/durability.txt"):
            name, _, text = line.rstrip("\n").partition("|")
            durability[name] = text
    results = {(s, w): load(f"{out}/{s}-{w}.json") for s in systems for w in ("max", "rate", "produce")}
    rounds = {s: rate_rounds(out, s) for s in systems}
    limits = load(f"{out}/limits.json")
    # Start time and commit of the sitting, recorded by peers.sh when it began.
    meta = dict(line.rstrip("\n").split("=", 1) for line in open(f"{out}/meta.txt")) if os.path.exists(f"{out}/meta.txt") else {}
    commit = meta.get("commit") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    started = meta.get("started") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count() or 1
    busy = float(args.load_before.split()[0]) > 0.5 * cpus or float(args.load_after.split()[0]) > 0.5 * cpus

    w = []
    w.append(f"{SECTION}\n")
    w.append(f"Measured {started} by `scripts/bench/peers.sh` "
             f"(commit {commit}) on {machine()}.")
    w.append(f"Load average (1/5/15 min) before: {args.load_before}; after: {args.load_after}.")
    if "server_cpu" in meta:
        w.append(f"Placement, every system alike: its server pinned to CPU {meta['server_cpu']} (the CPU taking "
                 f"the data disk's interrupts), the load generator to CPU {meta['bench_cpu']} (`taskset -c`).")
    if busy:
        w.append("**Load average above half the CPU count (the script's own build and fio runs just "
                 "before, and the benchmarks themselves, count towards it): treat every single run as "
                 "noisy, and the A/B pairs below as the fairer comparison.**")
    w.append("")
    w.append("Workloads: 1 producer, 1 consumer, 1 partition (or stream), 100-byte records, acks=all. "
             f"**max**: closed loop, 10,000 records in flight, librdkafka linger.ms=5. **rate**: open loop at "
             f"{int(args.rate):,} records/s, linger.ms=0, the generator waking once per {args.tick_us} µs "
             f"(`--tick-us`); latency from each record's intended send time "
             f"(coordinated omission corrected). Warm-up {args.warmup}, measured {args.duration} per run. max: one run "
             f"per system; rate: {args.rounds} round(s), every system once per round in turn, and each latency "
             "percentile below is the median over the rounds (the per-round end-to-end p99.9 is listed beside it).")
    w.append("Clients: librdkafka (rdkafka crate) for Rill and tansu; for Redis and NATS, rill-bench's own "
             "protocol clients (pipelined XADD + XREAD BLOCK; JetStream publish with ack + push consumer), "
             "same pacing, clock and histograms. librdkafka settings (linger, acks) do not apply to them: Redis "
             "and NATS acknowledge each record on its own. **rill-kw** is the same Rill (fsync) measured with "
             "rill-bench's own Kafka client (`--client kafka-wire`), built like the Redis and NATS clients: what one "
             "wake-up of the generator hands over leaves in one write (for Kafka one batch, for Redis one pipelined "
             "XADD per record, for NATS one PUB per record), replies read by one thread per connection. Every system "
             "ran on the same 2 CPUs as the load generator.")
    clients = sorted({r["client"] for r in results.values() if r and "client" in r})
    w.append("The clients as the results record them: " + "; ".join(f"`{c}`" for c in clients) + ".")
    if any("malloc trim threshold" in c for c in clients):
        w[-1] += (" rill-bench raises glibc malloc's trim threshold in its own process unless given "
                  "`--malloc-defaults` (bench/src/alloc.rs), for every system alike: freed produce-request "
                  "memory then stays in the client instead of being faulted in again.")
    w.append("")
    w.append("### Machine limits (scripts/bench/limits.sh, same sitting)\n")
    w.append(limits_table(limits))
    w.append("### Figures\n")
    w.append("| system | durability | max: records/s | max: MB/s | max: delivered records/s | producer alone: records/s | rate: produce-ack p50 / p99 / p99.9 µs | rate: end-to-end p50 / p99 / p99.9 µs | rate: end-to-end p99.9 of each round µs | rate: records/s |")
    w.append("|---|---|---|---|---|---|---|---|---|---|")
    saturated = []
    for s in systems:
        m, r, p = results[(s, "max")], rounds[s], results[(s, "produce")]
        pa = " / ".join(fmt(r.lat("produce", k)) for k in ("p50_us", "p99_us", "p999_us"))
        ee = " / ".join(fmt(r.lat("e2e", k)) for k in ("p50_us", "p99_us", "p999_us"))
        each = ", ".join(fmt(v) for v in r.each("e2e", "p999_us"))
        achieved = r.records_per_s()
        mark = ""
        if achieved is not None and achieved < SATURATED_SHARE * float(args.rate):
            saturated.append(s)
            mark = " **(saturated)**"
        w.append(f"| {s} | {durability.get(s, '?')} | {fmt(acked(m))} "
                 f"| {fmt(m and m['produce']['mb_per_s'], 1)} | {fmt(delivered(m))} | {fmt(acked(p))} | {pa} | {ee} | {each} | {fmt(achieved)}{mark} |")
    w.append("")
    if saturated:
        w.append(f"Saturated: {', '.join(saturated)} acknowledged less than {SATURATED_SHARE:.0%} of the offered "
                 f"{int(args.rate):,} records/s in the rate workload; their latencies there are queueing delay "
                 "that grows with the run's length (open loop), not a steady-state latency.\n")
    missing = [f"{s}/max" for s in systems if results[(s, "max")] is None]
    missing += [f"{s}/rate ({args.rounds} rounds, {len(rounds[s].runs)} results)" for s in systems
                if len(rounds[s].runs) < int(args.rounds)]
    if missing:
        w.append(f"No result (run failed; see the run's .txt in target/bench/peers/): {', '.join(missing)}.\n")
    every = [((s, "max"), results[(s, "max")]) for s in systems]
    every += [((s, f"rate round {i + 1}"), v) for s in systems for i, v in enumerate(rounds[s].runs)]
    errors = [f"{s}/{wl}: {v['produce']['errors']} errors, {v['produce'].get('unacknowledged', 0)} unacknowledged, "
              f"{(v.get('end_to_end') or {}).get('missing_measured', 0)} unread"
              for (s, wl), v in every
              if v and (v['produce']['errors'] or v['produce'].get('unacknowledged') or (v.get('end_to_end') or {}).get('missing_measured'))]
    if errors:
        w.append(f"Delivery errors or unread records: {'; '.join(errors)}.\n")
    w.append("max: records/s counts produce acknowledgements; delivered records/s, the records the consumer "
             "read, is what the workload sustained end to end (a consumer behind its producer leaves records "
             "unread, listed above). Producer alone: the max workload with no consumer, Kafka-protocol brokers only, once per round; each system's run of median throughput.\n")
    for base in ("rill", "rill-kw"):
        if base not in systems:
            continue
        client = "librdkafka" if base == "rill" else "rill-bench's kafka-wire client"
        w.append(f"### Ratios, Rill ({base}: {client}) / peer\n")
        w.append("Throughput above 1: Rill faster. Latency below 1: Rill lower. Latency ratios are of the medians over the rate rounds.\n")
        w.append("| peer | throughput (max, acknowledged) | throughput (max, delivered) | produce p50 | produce p99 | produce p99.9 | e2e p50 | e2e p99 | e2e p99.9 |")
        w.append("|---|---|---|---|---|---|---|---|---|")
        rm, rr = results[(base, "max")], rounds[base]
        for s in systems:
            if s.startswith("rill"):
                continue
            pm, pr = results[(s, "max")], rounds[s]
            cells = [ratio(acked(rm), acked(pm)),
                     ratio(delivered(rm), delivered(pm))]
            cells += [ratio(rr.lat("produce", k), pr.lat("produce", k)) for k in ("p50_us", "p99_us", "p999_us")]
            cells += [ratio(rr.lat("e2e", k), pr.lat("e2e", k)) for k in ("p50_us", "p99_us", "p999_us")]
            w.append(f"| {s} ({durability.get(s, '?')}) | " + " | ".join(cells) + " |")
        w.append("")
    w.extend(storage_table(out, systems, rounds))
    if "rill" in systems:
        w.extend(targets(results, rounds, systems, args.rate))
    compare = load(f"{out}/compare-rill-tansu-sqlite.json")
    if compare:
        w.append("### A/B pairs: Rill and tansu (sqlite), alternating, workload max\n")
        w.append("| pair | throughput | produce p50 | produce p99 | produce p99.9 | rill records/s | tansu records/s |")
        w.append("|---|---|---|---|---|---|---|")
        for i, p in enumerate(compare["pairs"]):
            a, b = compare["runs"][2 * i], compare["runs"][2 * i + 1]
            w.append(f"| {i + 1} | {p['throughput']:.2f} | {p['produce_p50']:.2f} | {p['produce_p99']:.2f} | "
                     f"{p['produce_p999']:.2f} | {fmt(a['produce']['records_per_s'])} | {fmt(b['produce']['records_per_s'])} |")
        m = compare["median"]
        w.append(f"| median | {m['throughput']:.2f} | {m['produce_p50']:.2f} | {m['produce_p99']:.2f} | {m['produce_p999']:.2f} | | |")
        w.append("")
    w.append("### Plots\n")
    for name, what in (("all-rate-e2e", "end-to-end latency, open loop"), ("all-rate-produce", "produce-ack latency, open loop"),
                       ("all-max-produce", "produce-ack latency, closed loop"),
                       ("all-max-e2e", "end-to-end latency, closed loop"),
                       ("compare-rill-tansu-sqlite", "produce-ack latency of the A/B pairs")):
        if os.path.exists(f"{out}/{name}.png"):
            w.append(f"![{what}](bench/peers-{name}.png)")
    w.append("")
    w.append("### Commands\n")
    w.append("```")
    w.append("scripts/bench/peers.sh   # all of the below, servers started and stopped by the script")
    if os.path.exists(f"{out}/commands.txt"):
        w.extend(line.rstrip("\n") for line in open(f"{out}/commands.txt"))
    w.append("```")
    return "\n".join(w) + "\n"


def splice(path, section_text):
    """Replaces the section (its heading up to the next '## ' heading) or appends it."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section_text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = "\n".join(lines[:start]).rstrip("\n")
        after = "\n".join(lines[end:]).strip("\n")
        new = (before + "\n\n" if before else "") + section_text.rstrip("\n") + "\n"
        if after:
            new += "\n" + after + "\n"
    with open(path, "w") as f:
        f.write(new)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir")
    parser.add_argument("--systems", default="")
    parser.add_argument("--load-before", default="0 0 0")
    parser.add_argument("--load-after", default="0 0 0")
    parser.add_argument("--rate", default="50000")
    parser.add_argument("--tick-us", default="0")
    parser.add_argument("--duration", default="")
    parser.add_argument("--warmup", default="")
    parser.add_argument("--rounds", default="1")
    parser.add_argument("--splice", help="file to splice the section into")
    parser.add_argument("--section", default=SECTION)
    parser.add_argument("--from", dest="source", help="markdown produced earlier")
    args = parser.parse_args()
    if args.splice:
        splice(args.splice, open(args.source).read())
    else:
        sys.stdout.write(report(args))


if __name__ == "__main__":
    main()
