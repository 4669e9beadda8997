#!/usr/bin/env bash
# An NFSv4 server for the tests that never reaches beyond this machine:
# userspace nfs-ganesha (this kernel has no nfsd) in a network namespace of
# its own (vapor-nfs, 192.168.151.2), whose only link is a veth port on an
# isolated libvirt network (vt-nfs: bridge vtnfs0, 192.168.151.1/24, DHCP,
# no <forward>). A guest given an interface on vt-nfs mounts
# 192.168.151.2:/export; traffic crosses only that bridge.
#
# Usage: tests/env/nfs-server.sh up|down|status
#   up      idempotent; prints the export's directory on the host
#   down    stops ganesha, removes the namespace and the network
set -euo pipefail
log() { printf '[nfs-server] %s\n' "$*" >&2; }

NET=vt-nfs
BR=vtnfs0
NS=vapor-nfs
HOST_IF=vtnfsh0
NS_IF=vtnfsn0
NS_IP=192.168.151.2
STATE=/var/lib/vapor-tests/nfs-server
EXPORT=/var/lib/vapor-tests/nfs-export

# The pid in the pid file, only while it is still our ganesha (a pid can be
# reused by anything).
ganesha_pid() {
  local p
  p=$(cat "$STATE/ganesha.pid" 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = ganesha.nfsd ] && echo "$p"
}

listening() { ip netns exec "$NS" ss -ltn 2>/dev/null | grep -q ":2049 "; }

up() {
  command -v ganesha.nfsd >/dev/null || { log "ganesha.nfsd is not installed (tests/env/setup.sh)"; exit 1; }
  if ! virsh -q net-info "$NET" >/dev/null 2>&1; then
    local xml; xml=$(mktemp)
    cat >"$xml" <<EOF
<network>
  <name>$NET</name>
  <bridge name='$BR' stp='off' delay='0'/>
  <dns enable='no'/>
  <ip address='192.168.151.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.151.100' end='192.168.151.200'/></dhcp>
  </ip>
</network>
EOF
    virsh -q net-create "$xml" >/dev/null
    rm -f "$xml"
  fi
  # Ours only if isolated and running (a network of that name made by
  # something else is not used).
  # (Whole outputs first: grep -q closing a pipe early fails it under pipefail.)
  local xml_now info
  xml_now=$(virsh -q net-dumpxml "$NET")
  info=$(virsh -q net-info "$NET")
  if grep -q '<forward' <<<"$xml_now"; then log "$NET forwards traffic: not ours"; exit 1; fi
  grep -q '^Active: *yes' <<<"$info" || virsh -q net-start "$NET" >/dev/null
  if ! ip netns list | grep -qx "$NS\( .*\)\?"; then
    ip netns add "$NS"
  fi
  # (Re)built whole unless the namespace's end has its address and is up.
  if ! ip -n "$NS" -4 addr show dev "$NS_IF" up 2>/dev/null | grep -q "$NS_IP/24" ||
     ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip -n "$NS" link del "$NS_IF" 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    ip link add "$HOST_IF" type veth peer name "$NS_IF"
    ip link set "$NS_IF" netns "$NS"
    ip link set "$HOST_IF" master "$BR" up
    ip -n "$NS" addr add "$NS_IP/24" dev "$NS_IF"
    ip -n "$NS" link set "$NS_IF" up
    ip -n "$NS" link set lo up
  fi
  mkdir -p "$STATE" "$EXPORT"
  if ! ganesha_pid >/dev/null; then
    cat >"$STATE/ganesha.conf" <<EOF
NFS_CORE_PARAM {
  Protocols = 4;
  Bind_addr = $NS_IP;
  Enable_NLM = false;
  Enable_RQUOTA = false;
}
NFSV4 { Graceless = true; Only_Numeric_Owners = true; }
EXPORT {
  Export_Id = 1;
  Path = $EXPORT;
  Pseudo = /export;
  Protocols = 4;
  Transports = TCP;
  SecType = sys;
  Squash = No_Root_Squash;
  Access_Type = NONE;
  CLIENT { Clients = 192.168.151.0/24; Access_Type = RW; }
  FSAL { Name = VFS; }
}
EOF
    ip netns exec "$NS" ganesha.nfsd -f "$STATE/ganesha.conf" -L "$STATE/ganesha.log" \
      -p "$STATE/ganesha.pid" -N NIV_EVENT
  fi
  local i
  for i in $(seq 100); do
    listening && break
    sleep 0.1
  done
  listening || { log "ganesha did not listen on $NS_IP:2049; its log:"; tail -20 "$STATE/ganesha.log" >&2; exit 1; }
  log "serving $EXPORT as $NS_IP:/export on network $NET"
  echo "$EXPORT"
}

down() {
  local p
  if p=$(ganesha_pid); then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$STATE/ganesha.pid"
  # Anything else left running in the namespace (a ganesha whose pid file
  # was lost) goes with it.
  local q
  for q in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$q" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  virsh -q net-destroy "$NET" >/dev/null 2>&1 || true
  log "down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) ganesha_pid >/dev/null && listening && echo running || { echo stopped; exit 1; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
