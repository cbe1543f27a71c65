# Helpers shared by the benchmark scripts (sourced, not run).

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL. Only for processes the script started.
stop_pid() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# disk_irq_cpu DIR: the CPU that has taken most of the interrupts of the disk holding DIR (its
# MSI vectors' counts in /proc/interrupts), so a benchmark can run servers there and keep its load
# generator off it; 0 when that cannot be told (no MSI vectors, a device-mapper stack, ...).
disk_irq_cpu() {
  python3 - "$1" <<'PY' 2>/dev/null || echo 0
import os, subprocess, sys

def out(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

source = out("findmnt", "-no", "SOURCE", "-T", sys.argv[1]).split("[")[0]
disk = out("lsblk", "-no", "PKNAME", source).splitlines()
disk = (disk[0] if disk and disk[0] else os.path.basename(source)).strip()
path = os.path.realpath(f"/sys/block/{disk}/device")
while path != "/" and not os.path.isdir(os.path.join(path, "msi_irqs")):
    path = os.path.dirname(path)
irqs = set(os.listdir(os.path.join(path, "msi_irqs")))
with open("/proc/interrupts") as f:
    cpus = len(f.readline().split())
    totals = [0] * cpus
    for line in f:
        fields = line.split()
        if fields and fields[0].rstrip(":") in irqs:
            for cpu, count in enumerate(fields[1 : cpus + 1]):
                totals[cpu] += int(count)
print(max(range(cpus), key=lambda cpu: totals[cpu]) if any(totals) else 0)
PY
}

# other_cpu CPU: the last CPU that is not CPU (CPU itself on a one-CPU machine).
other_cpu() {
  local last=$(($(nproc) - 1))
  if [ "$last" = "$1" ] && [ "$last" -gt 0 ]; then echo $((last - 1)); else echo "$last"; fi
}
