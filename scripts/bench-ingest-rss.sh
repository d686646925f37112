#!/usr/bin/env bash
# Peak memory of a large CSV import: generates SIZE_MB of CSV, starts a release-like `moat serve`,
# uploads the file over HTTP, and prints the server's peak RSS (VmHWM) before and after.
#   cargo build --profile bench-fast -p moat && SIZE_MB=1024 scripts/bench-ingest-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${MOAT_BIN:-${CARGO_TARGET_DIR:-target}/bench-fast/moat}"
SIZE_MB="${SIZE_MB:-1024}"
PORT="${PORT:-18080}"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$work/big.csv" "$SIZE_MB" <<'PY'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
target = mb * 1024 * 1024
first = ["Ann", "Bob", "Cy", "Dee", "Eve", "Finn", "Gus", "Hal"]
with open(path, "w") as f:
    f.write("id,name,email,ssn,zip,amount,signup\n")
    i = 0
    while f.tell() < target:
        rows = []
        for _ in range(10000):
            n = first[i % 8]
            rows.append(f"{i},{n} Person{i},{n.lower()}{i}@mail.example,{100 + i % 800:03}-{1 + i % 98:02}-{i % 10000:04},{i % 100000:05},{i % 99991}.{i % 100:02},2024-{1 + i % 12:02}-{1 + i % 28:02}\n")
            i += 1
        f.write("".join(rows))
PY
size=$(stat -c %s "$work/big.csv")

export MOAT_DATA_DIR="$work/data"
"$BIN" init >/dev/null
echo 'Tr1cky-Gazelle-9' | "$BIN" superadmin create --email root@bench.example --password-stdin >/dev/null
"$BIN" serve --http "127.0.0.1:$PORT" --pg "127.0.0.1:$((PORT + 1))" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
base="http://127.0.0.1:$PORT/v1"
token() { curl -sf "$base/auth/login" -H 'content-type: application/json' -d "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'; }
sa=$(token '{"email":"root@bench.example","password":"Tr1cky-Gazelle-9"}')
curl -sf "$base/tenants" -H "authorization: Bearer $sa" -H 'content-type: application/json' \
  -d '{"slug":"bench","name":"Bench","admin":{"email":"admin@bench.example","password":"Tr1cky-Gazelle-9"}}' >/dev/null
admin=$(token '{"tenant":"bench","email":"admin@bench.example","password":"Tr1cky-Gazelle-9"}')
before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
start=$(date +%s.%N)
curl -sf -X PUT "$base/tables/big" -H "authorization: Bearer $admin" -H 'content-type: text/csv' -T "$work/big.csv" -o "$work/resp.json"
end=$(date +%s.%N)
after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
python3 - "$work/resp.json" "$size" "$before" "$after" "$start" "$end" <<'PY'
import json, sys
resp, size, before, after, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
r = json.load(open(resp))
secs = end - start
print(f"CSV {size / 2**20:.0f} MiB, {r['row_count']} rows -> Parquet {r['bytes'] / 2**20:.0f} MiB in {secs:.1f} s ({size / 2**20 / secs:.0f} MiB/s)")
print(f"server peak RSS: {before / 1024:.0f} MiB after start, {after / 1024:.0f} MiB after the import "
      f"(import added {(after - before) / 1024:.0f} MiB = {(after - before) * 1024 / size * 100:.1f}% of the file)")
PY
