#!/bin/bash
# Two sites on loopback (a locator and a server each; site 1 replicates region `orders` to
# site 2 through a parallel gateway sender). Writes N SETs of SIZE-byte values at site 1 with
# redis-benchmark (-P 16 -c 50), then waits until site 2's receiver has applied them all and
# prints events/s from the first write to the last apply at site 2.
#
#   cargo build --release -p strait-tools
#   examples/two-sites.sh                                  # persistent queue, every-batch
#   SYNC=interval-1000ms examples/two-sites.sh             # persistent queue, fsync each second
#   PERSIST=false examples/two-sites.sh                    # in-memory queue
#
# Needs redis-cli and redis-benchmark (Debian: redis-tools). Uses ports 21334-21335 (locators),
# 21404-21405 (clients) and 21500-21510 (site 2's receiver), and a fresh temporary directory.
set -u
N=${N:-200000}; SIZE=${SIZE:-1024}; PERSIST=${PERSIST:-true}
B=$(cd "$(dirname "$0")/.." && pwd)/target/release/strait
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
cd "$W"; mkdir -p s1 s2
$B start locator --name l1 --port 21334 --bind-address 127.0.0.1 --dir s1/loc --distributed-system-id 1 --remote-locators 127.0.0.1:21335 --exchange-interval-ms 200 > s1/loc.log 2>&1 &
$B start locator --name l2 --port 21335 --bind-address 127.0.0.1 --dir s2/loc --distributed-system-id 2 --remote-locators 127.0.0.1:21334 --exchange-interval-ms 200 > s2/loc.log 2>&1 &
cat > s1/site.toml <<T
[server]
name = "s1"
distributed-system-id = 1
bind-address = "127.0.0.1"
client-port = 21404
http-service-port = 21414
directory = "$W/s1"
locators = ["127.0.0.1:21334"]
[[gateway-sender]]
id = "to2"
remote-distributed-system-id = 2
parallel = true
enable-persistence = $PERSIST
sync-policy = "${SYNC:-every-batch}"
[[region]]
name = "orders"
type = "partition"
gateway-sender-ids = ["to2"]
T
cat > s2/site.toml <<T
[server]
name = "s2"
distributed-system-id = 2
bind-address = "127.0.0.1"
client-port = 21405
http-service-port = 21415
directory = "$W/s2"
locators = ["127.0.0.1:21335"]
[[region]]
name = "orders"
type = "partition"
[gateway-receiver]
start-port = 21500
end-port = 21510
bind-address = "127.0.0.1"
T
$B start server --config s2/site.toml > s2/srv.log 2>&1 &
$B start server --config s1/site.toml > s1/srv.log 2>&1 &
for i in $(seq 100); do redis-cli -p 21404 ping >/dev/null 2>&1 && redis-cli -p 21405 ping >/dev/null 2>&1 && break; sleep 0.1; done
# Until every shard's dispatcher at site 1 is connected to site 2.
for i in $(seq 300); do redis-cli -p 21404 info | grep -q '^to2:.*connected=\([0-9]*\)/\1' && break; sleep 0.1; done
t0=$(date +%s.%N)
redis-benchmark -p 21404 -t set -n $N -P 16 -c 50 -r 100000000 -d $SIZE -q 2>&1 | tr '\r' '\n' | grep -a 'per second'
t1=$(date +%s.%N)
target=$N
while true; do
  a=$(redis-cli -p 21405 info | grep '^receiver:' | sed 's/.*applied=\([0-9]*\).*/\1/')
  [ "${a:-0}" -ge "$target" ] && break
  q=$(redis-cli -p 21404 info | grep '^to2:' | sed 's/.*queued=\([0-9]*\).*/\1/')
  [ "${q:-1}" = "0" ] && break
  sleep 0.02
done
t2=$(date +%s.%N)
redis-cli -p 21405 info | grep '^receiver:'
python3 -c "n=$N; s=$SIZE; w=$t1-$t0; t=$t2-$t0; print(f'writes {w:.2f}s; all applied at site 2 after {t:.2f}s: {n/t:,.0f} events/s, {n*s/t/1e6:.0f} MB/s of values')"
