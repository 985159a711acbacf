#!/bin/bash
# Replication across NAT, on one machine: the steps of docs/nat.md, with network namespaces
# standing in for the two places. Site 1 ("home") sits behind a router that masquerades it;
# site 2 ("cloud VM") is reachable only at a public address whose router forwards (DNAT) its
# locator port and receiver port range. Entries put at site 1 appear at site 2; then site 1's
# router forwards site 1's ports too, and entries put at site 2 appear at site 1.
#
#   cargo build --release -p strait-tools
#   sudo examples/nat/run.sh                       # STRAIT=path/to/strait to use another build
#   sudo PUBLIC_NAMES=no examples/nat/run.sh       # without hostname-for-*: see the warning
#
# Needs root, ip (iproute2), iptables (either backend) and redis-cli (redis-tools). Creates
# namespaces strait-nat-<pid>-{h1,r1,r2,h2} and the networks 192.168.201.0/24 (home),
# 10.201.0.0/24 ("public") and 192.168.202.0/24 (cloud) inside them only; removes everything
# on exit. Logs are in a temporary directory, printed on failure.
set -u
B=${STRAIT:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/strait}
PUBLIC_NAMES=${PUBLIC_NAMES:-yes}
P=strait-nat-$$
H1=$P-h1; R1=$P-r1; R2=$P-r2; H2=$P-h2
PUBLIC_1=10.201.0.1; PUBLIC_2=10.201.0.2        # the routers' public addresses
PRIVATE_1=192.168.201.2; PRIVATE_2=192.168.202.2 # the sites' own addresses
LOCATOR=10334; CLIENT=40404; RECV_START=5000; RECV_END=5007

for tool in ip iptables redis-cli; do
  command -v $tool >/dev/null || { echo "needs $tool"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, iptables)"; exit 1; }
[ -x "$B" ] || { echo "no strait binary at $B: cargo build --release -p strait-tools"; exit 1; }

W=$(mktemp -d)
cleanup() {
  # SIGTERM, up to 10 s to stop, then SIGKILL: a cleanup that cannot hang.
  local pids; pids=$(jobs -p)
  kill $pids 2>/dev/null
  for _ in $(seq 100); do kill -0 $pids 2>/dev/null || break; sleep 0.1; done
  kill -9 $pids 2>/dev/null; wait 2>/dev/null
  for ns in $H1 $R1 $R2 $H2; do ip netns del $ns 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "FAILED: $*"; for f in "$W"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# Polls a condition for up to 60 s.
wait_for() {
  local what=$1; shift
  for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done
  fail "timed out waiting for $what"
}

echo "== the network: home behind NAT, cloud behind a forwarding router"
for ns in $H1 $R1 $R2 $H2; do ip netns add $ns; ip -n $ns link set lo up; done
ip -n $H1 link add eth0 type veth peer name lan netns $R1
ip -n $R1 link add wan type veth peer name wan netns $R2
ip -n $R2 link add lan type veth peer name eth0 netns $H2
ip -n $H1 addr add $PRIVATE_1/24 dev eth0;   ip -n $H1 link set eth0 up
ip -n $R1 addr add 192.168.201.1/24 dev lan; ip -n $R1 link set lan up
ip -n $R1 addr add $PUBLIC_1/24 dev wan;     ip -n $R1 link set wan up
ip -n $R2 addr add $PUBLIC_2/24 dev wan;     ip -n $R2 link set wan up
ip -n $R2 addr add 192.168.202.1/24 dev lan; ip -n $R2 link set lan up
ip -n $H2 addr add $PRIVATE_2/24 dev eth0;   ip -n $H2 link set eth0 up
ip -n $H1 route add default via 192.168.201.1
ip -n $H2 route add default via 192.168.202.1
# The routers reach each other ("the internet"); each masquerades its site's connections and
# silently drops new connections from outside that it does not forward, as a cloud's edge
# does.
ip -n $R1 route add default via $PUBLIC_2
ip -n $R2 route add default via $PUBLIC_1
for r in $R1 $R2; do
  in_ns $r sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  in_ns $r iptables -A FORWARD -i wan -m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -j DROP
done
in_ns $R1 iptables -t nat -A POSTROUTING -s 192.168.201.0/24 -o wan -j MASQUERADE
in_ns $R2 iptables -t nat -A POSTROUTING -s 192.168.202.0/24 -o wan -j MASQUERADE

# Step 1 of docs/nat.md: the cloud side forwards its locator port and its receiver port
# range, each port to the same port.
forward() { # router public private
  in_ns $1 iptables -t nat -A PREROUTING -i wan -d $2 -p tcp --dport $LOCATOR -j DNAT --to-destination $3
  in_ns $1 iptables -t nat -A PREROUTING -i wan -d $2 -p tcp --dport $RECV_START:$RECV_END -j DNAT --to-destination $3
}
forward $R2 $PUBLIC_2 $PRIVATE_2

# Steps 2 and 3: each site's locator and server; hostname-for-clients (locator) and
# hostname-for-senders (receiver) name the site's public address.
site() { # id ns private public other remote-locators
  local id=$1 ns=$2 ip=$3 public=$4 other=$5 remote=$6 names=() recv_name=""
  if [ "$PUBLIC_NAMES" = yes ]; then
    names=(--hostname-for-clients "$public"); recv_name="hostname-for-senders = \"$public\""
  fi
  mkdir -p "$W/s$id/locator"
  cat > "$W/s$id/site.toml" <<T
[server]
name = "server$id"
distributed-system-id = $id
bind-address = "$ip"
client-port = $CLIENT
directory = "$W/s$id"
locators = ["$ip[$LOCATOR]"]
[[gateway-sender]]
id = "to$other"
remote-distributed-system-id = $other
parallel = true
[[region]]
name = "orders"
type = "partition"
gateway-sender-ids = ["to$other"]
[gateway-receiver]
start-port = $RECV_START
end-port = $RECV_END
bind-address = "$ip"
$recv_name
T
  # Started with ip netns exec directly (not through a function), so that the job's pid is
  # strait's own and the cleanup's kill reaches it.
  ip netns exec $ns "$B" start locator --name locator$id --port $LOCATOR --bind-address $ip \
    --dir "$W/s$id/locator" --distributed-system-id $id ${remote:+--remote-locators "$remote"} \
    "${names[@]}" --exchange-interval-ms 1000 > "$W/locator$id.log" 2>&1 &
  wait_for "locator $id" grep -qs 'listening on' "$W/locator$id.log"
  ip netns exec $ns "$B" start server --config "$W/s$id/site.toml" > "$W/server$id.log" 2>&1 &
  wait_for "server $id" grep -qs 'listening on' "$W/server$id.log"
}
echo "== site 2 (cloud, public address $PUBLIC_2)"
site 2 $H2 $PRIVATE_2 $PUBLIC_2 1 ""
echo "== site 1 (home, behind NAT), remote-locators = $PUBLIC_2[$LOCATOR]"
site 1 $H1 $PRIVATE_1 $PUBLIC_1 2 "$PUBLIC_2[$LOCATOR]"

# Commands on one connection to a site's client port, one a line on stdin (REGION selects the
# region for the commands after it).
cli() { # site
  local ns=$H1 ip=$PRIVATE_1
  [ "$1" = 2 ] && ns=$H2 ip=$PRIVATE_2
  in_ns $ns redis-cli -h $ip -p $CLIENT
}
get() { printf 'REGION orders\nGET %s\n' "$2" | cli "$1" 2>/dev/null | tail -1; }
put() { printf 'REGION orders\nSET %s %s\n' "$2" "$3" | cli "$1" >/dev/null; }
has() { [ "$(get "$1" "$2")" = "$3" ]; }

# Step 4: an entry put at home appears in the cloud.
echo "== put at site 1, get at site 2"
put 1 from-home hello-from-site-1
if [ "$PUBLIC_NAMES" != yes ]; then
  wait_for "the sender's warning" grep -qs 'cannot connect to receiver' "$W/server1.log"
  grep 'cannot connect to receiver' "$W/server1.log" | head -1
  echo INFO | cli 1 | grep '^to2:'
  has 2 from-home "" && echo "site 2 holds nothing: set hostname-for-clients and hostname-for-senders (docs/nat.md)"
  exit 0
fi
wait_for "site 2 to hold from-home" has 2 from-home hello-from-site-1
echo "site 2: from-home = $(get 2 from-home)"

# Step 5: both ways, once the home router forwards site 1's ports too.
echo "== forward site 1's ports at its router; put at site 2, get at site 1"
forward $R1 $PUBLIC_1 $PRIVATE_1
put 2 from-cloud hello-from-site-2
wait_for "site 1 to hold from-cloud" has 1 from-cloud hello-from-site-2
echo "site 1: from-cloud = $(get 1 from-cloud)"
echo INFO | cli 1 | grep -E '^(to2|receiver):'
echo INFO | cli 2 | grep -E '^(to1|receiver):'
echo "OK: entries cross the NAT both ways"
