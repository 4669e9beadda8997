#!/bin/bash
# A second, independent libvirt host on this machine, for migration tests.
#
#   second-host.sh up      start it (stopping a stale one first)
#   second-host.sh down    stop it and remove everything it made
#   second-host.sh virsh ARGS...   virsh against it (through its socket)
#   second-host.sh exec CMD...     run CMD inside its namespaces
#
# The host lives in its own network, mount and UTS namespaces (hostname
# vapor-b, its own host UUID) with private /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and
# /var/lib/vapor-tests (so disks copied there never land on the real
# host's files of the same path). Its libvirtd listens on TCP at
# 10.213.7.2:16509 without authentication: that address exists only on a
# veth pair between the host's namespace and the root namespace
# (10.213.7.1), so nothing but this machine can reach it.
#
# The real libvirtd (the source of a migration) reaches it at
# qemu+tcp://10.213.7.2/system; tests read it through its Unix socket,
# $STATE/run/libvirt-sock (qemu:///system?socket=...).
#
# Like a real host, it has a system bus and a polkitd of its own: inside
# its namespaces /run/dbus is private, so the stock dbus-daemon --system
# and polkitd serve it, with this machine's bus policy, polkit actions,
# rules and users; nothing is started on demand there (never an installed
# vapord: polkitd is started here, vapord by whoever uses the host). A
# vapord started there with `exec` (its /var/lib/vapor
# and /run/vapor are private too) owns org.vapor.Virtualization on that bus
# and manages the second libvirtd as qemu:///system; the first host's
# libvirtd is reachable there through its socket at
# $STATE/home-libvirt/libvirt-sock.
set -euo pipefail

STATE=${VAPOR_SECOND_HOST:-/var/lib/vapor-second-host}
NS=vapor-b
ROOT_IF=vapor-b0
NS_IF=vapor-b1
ROOT_IP=10.213.7.1
NS_IP=10.213.7.2
NSF=$STATE/ns

log() { printf '[second-host] %s\n' "$*" >&2; }

inside() { nsenter --net=/run/netns/$NS --mount=$NSF/mnt --uts=$NSF/uts -- "$@"; }

polkit_up() {
    inside busctl --system call org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus NameHasOwner s org.freedesktop.PolicyKit1 2>/dev/null | grep -q true
}

uri() { echo "qemu:///system?socket=$STATE/run/libvirt-sock"; }

# The pid in file $1, if that process lives in our network namespace.
ours() {
    local f=$1 p
    [ -s "$f" ] || return 0
    p=$(cat "$f")
    [ -e /run/netns/$NS ] || return 0
    [ "$(readlink /proc/$p/ns/net 2>/dev/null)" = "net:[$(stat -L -c %i /run/netns/$NS)]" ] && echo "$p" || true
}

stop_pids() {
    local p alive i
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for i in $(seq 1 100); do
        alive=""
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
        [ -z "$alive" ] && return 0
        sleep 0.05
    done
    kill -9 $alive 2>/dev/null || true
}

down() {
    if [ -S "$STATE/run/libvirt-sock" ] && [ -n "$(ours "$STATE/run/libvirtd.pid")" ]; then
        for d in $(virsh -q -c "$(uri)" list --name 2>/dev/null); do
            virsh -q -c "$(uri)" destroy "$d" >/dev/null 2>&1 || true
        done
    fi
    local pids=""
    pids="$(ours "$STATE/run/libvirtd.pid")"
    [ -n "$pids" ] && stop_pids $pids
    pids=""
    for f in "$STATE"/run/qemu/*.pid; do [ -e "$f" ] && pids="$pids $(ours "$f")"; done
    [ -n "${pids// /}" ] && kill -9 $pids 2>/dev/null || true
    pids="$(ours "$STATE/run/virtlogd.pid")"
    [ -n "$pids" ] && stop_pids $pids
    # The bus, polkitd and whatever else still runs in the namespace
    # (a vapord started with exec).
    [ -e /run/netns/$NS ] && pids="$(ip netns pids $NS 2>/dev/null | tr '\n' ' ')" || pids=""
    [ -n "${pids// /}" ] && stop_pids $pids
    for f in mnt uts; do
        mountpoint -q "$NSF/$f" 2>/dev/null && umount "$NSF/$f"
    done
    mountpoint -q "$NSF" 2>/dev/null && umount "$NSF"
    ip link del $ROOT_IF 2>/dev/null || true
    ip netns del $NS 2>/dev/null || true
    rm -rf "$STATE"
}

up() {
    down
    mkdir -p "$STATE"/{etc,run,lib,log,cache,tests,dbus,no-services,vapor,vapor-run,home-libvirt} "$NSF"
    local conf
    for conf in libvirt.conf libvirtd.conf qemu.conf virtlogd.conf; do
        [ -e /etc/libvirt/$conf ] && cp /etc/libvirt/$conf "$STATE/etc/"
    done
    [ -d /etc/libvirt/nwfilter ] && cp -a /etc/libvirt/nwfilter "$STATE/etc/"
    mkdir -p "$STATE"/etc/{qemu,storage,secrets} "$STATE"/lib/{qemu,images} "$STATE"/log/qemu "$STATE"/cache/qemu
    chmod 700 "$STATE/etc/secrets"
    cat >> "$STATE/etc/libvirtd.conf" <<EOF

# second test host
listen_tls = 0
listen_tcp = 1
listen_addr = "$NS_IP"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    cat >> "$STATE/etc/qemu.conf" <<EOF

# second test host: no cgroups (the hosts share the machine's tree and a
# migrating guest exists on both at once); incoming migrations listen here
cgroup_controllers = [ ]
migration_address = "$NS_IP"
migration_host = "$NS_IP"
EOF
    # The QEMU capabilities cache makes the first call several seconds faster.
    [ -d /var/cache/libvirt/qemu/capabilities ] && cp -a /var/cache/libvirt/qemu/capabilities "$STATE/cache/qemu/"
    chown libvirt-qemu:libvirt-qemu "$STATE/lib/qemu" 2>/dev/null || true
    chmod 0751 "$STATE/lib/qemu"
    printf '127.0.0.1 localhost\n%s vapor-b\n%s vapor-a\n' $NS_IP $ROOT_IP > "$STATE/hosts"
    : > "$STATE/resolv.conf"
    echo vapor-b > "$STATE/hostname"

    ip netns add $NS
    ip -n $NS link set lo up
    ip link add $ROOT_IF type veth peer name $NS_IF netns $NS
    ip addr add $ROOT_IP/24 dev $ROOT_IF
    ip link set $ROOT_IF up
    ip -n $NS addr add $NS_IP/24 dev $NS_IF
    ip -n $NS link set $NS_IF up

    # Namespace files on a private bind of their own directory, so the
    # namespaces live on without a process holding them.
    mount --bind "$NSF" "$NSF"
    mount --make-private "$NSF"
    touch "$NSF/mnt" "$NSF/uts"
    unshare --mount="$NSF/mnt" --uts="$NSF/uts" --propagation private \
        nsenter --net=/run/netns/$NS sh -ec "
            hostname vapor-b
            umount -l /sys
            mount -t sysfs vapor-b-sysfs /sys
            mount --bind /run/libvirt '$STATE/home-libvirt'
            mount --bind '$STATE/etc' /etc/libvirt
            mount --bind '$STATE/run' /run/libvirt
            mount --bind '$STATE/lib' /var/lib/libvirt
            mount --bind '$STATE/log' /var/log/libvirt
            mount --bind '$STATE/cache' /var/cache/libvirt
            mkdir -p /var/lib/vapor-tests
            mount --bind '$STATE/tests' /var/lib/vapor-tests
            mount --bind '$STATE/hosts' /etc/hosts
            mount --bind '$STATE/resolv.conf' /etc/resolv.conf
            mount --bind '$STATE/hostname' /etc/hostname
            mount --bind '$STATE/dbus' /run/dbus
            mount --bind '$STATE/no-services' /usr/share/dbus-1/system-services
            mkdir -p /var/lib/vapor /run/vapor
            mount --bind '$STATE/vapor' /var/lib/vapor
            mount --bind '$STATE/vapor-run' /run/vapor
        "
    # Explicit pid files: the defaults belong to the real daemons.
    inside virtlogd -d -p /run/libvirt/virtlogd.pid -f /etc/libvirt/virtlogd.conf
    inside libvirtd -d --listen -p /run/libvirt/libvirtd.pid -f /etc/libvirt/libvirtd.conf
    local i
    for i in $(seq 1 300); do
        virsh -q -c "qemu+tcp://$NS_IP/system" hostname >/dev/null 2>&1 && break
        sleep 0.1
    done
    virsh -q -c "qemu+tcp://$NS_IP/system" hostname >/dev/null
    # Its system bus (the stock configuration: /run/dbus is its own) and
    # polkitd on it.
    chmod 0755 "$STATE/dbus"
    inside dbus-daemon --system --fork
    inside setsid /usr/lib/polkit-1/polkitd --no-debug </dev/null >"$STATE/polkitd.log" 2>&1 &
    for i in $(seq 1 300); do
        polkit_up && break
        sleep 0.1
    done
    polkit_up || { log "polkitd did not come up: $(cat "$STATE/polkitd.log")"; exit 1; }
    log "its system bus: unix:path=$STATE/dbus/system_bus_socket, with polkitd"
    log "up: qemu+tcp://$NS_IP/system, socket $STATE/run/libvirt-sock"
}

case "${1:-}" in
    up) up ;;
    down) down; log "down" ;;
    virsh) shift; exec virsh -c "$(uri)" "$@" ;;
    exec) shift; exec nsenter --net=/run/netns/$NS --mount=$NSF/mnt --uts=$NSF/uts -- "$@" ;;
    *) echo "usage: $0 up|down|virsh ARGS...|exec CMD..." >&2; exit 2 ;;
esac
