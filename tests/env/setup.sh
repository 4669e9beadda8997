#!/usr/bin/env bash
# Installs (idempotently) and starts the real components vapord talks to:
# the system bus, polkitd, virtlogd, libvirtd and systemd-udevd; installs the
# project's bus policy, polkit actions and the test rules; creates the test
# users. Safe to run again: everything already present or running is left alone.
#
# Usage: tests/env/setup.sh [--no-install-files]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- packages
pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients
      libvirt-dev qemu-system-x86 polkitd pkexec libvirt-dbus libudev-dev dbus pkg-config
      xorriso hwdata pciutils udev ovmf qemu-utils iproute2 util-linux
      nfs-ganesha nfs-ganesha-vfs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  src=/etc/apt/sources.list.d/bookworm-backports.sources
  if [ ! -f "$src" ]; then
    cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -qq
  # Keep services from being started by maintainer scripts (no systemd here anyway).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq -t bookworm-backports --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# ---------------------------------------------------------------- users
getent group vapor >/dev/null || groupadd --system vapor
id vapor-alice >/dev/null 2>&1 || useradd --create-home --groups vapor vapor-alice
id vapor-bob >/dev/null 2>&1 || useradd --create-home vapor-bob
# Members of vapor with one test each, so a test can tell its jobs apart.
id vapor-carol >/dev/null 2>&1 || useradd --create-home --groups vapor vapor-carol
id vapor-dave >/dev/null 2>&1 || useradd --create-home --groups vapor vapor-dave
id vapor-erin >/dev/null 2>&1 || useradd --create-home --groups vapor vapor-erin

# ---------------------------------------------------------------- project files
if [ "${1:-}" != "--no-install-files" ]; then
  "$top/packaging/install-data.sh" --prefix /usr --sysconfdir /etc >/dev/null
  install -D -m 0644 "$here/50-vapor-tests.rules" /etc/polkit-1/rules.d/50-vapor-tests.rules
fi

running() { pgrep -x "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- system bus
if ! [ -S /run/dbus/system_bus_socket ] || ! running dbus-daemon || \
   ! busctl --system status >/dev/null 2>&1; then
  log "starting the system bus"
  rm -f /run/dbus/pid /run/dbus/system_bus_socket
  mkdir -p /run/dbus
  dbus-daemon --system --fork
fi
# Make the bus pick up policy files we may just have installed.
busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true

# ---------------------------------------------------------------- polkit
# Judge services by whether they answer, not by process names: a daemon that
# is still shutting down must not be mistaken for a working one.
wait_gone() { for _ in $(seq 100); do running "$1" || return 0; sleep 0.1; done; return 1; }
if ! busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1; then
  log "starting polkitd"
  pkill -x polkitd 2>/dev/null || true; wait_gone polkitd || true
  (setsid /usr/lib/polkit-1/polkitd --no-debug </dev/null >/tmp/polkitd.log 2>&1 &)
  for _ in $(seq 100); do busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1 && break; sleep 0.1; done
  busctl --system status org.freedesktop.PolicyKit1 >/dev/null
fi

# ---------------------------------------------------------------- udev
if ! udevadm control --ping >/dev/null 2>&1; then
  log "starting systemd-udevd"
  pkill -x systemd-udevd 2>/dev/null || true; wait_gone systemd-udevd || true
  /lib/systemd/systemd-udevd --daemon
fi

# ---------------------------------------------------------------- libvirt
if ! running virtlogd; then log "starting virtlogd"; virtlogd -d; fi
libvirt_ok() { virsh -c qemu:///system version >/dev/null 2>&1; }
if ! libvirt_ok; then
  if running libvirtd; then
    # Starting up or shutting down: give it a moment to settle either way.
    for _ in $(seq 100); do libvirt_ok && break; running libvirtd || break; sleep 0.1; done
  fi
  if ! libvirt_ok; then
    log "starting libvirtd"
    pkill -x libvirtd 2>/dev/null || true; wait_gone libvirtd || true
    libvirtd -d
    for _ in $(seq 300); do libvirt_ok && break; sleep 0.1; done
  fi
fi
virsh -c qemu:///system version >/dev/null

# A default dir pool, so creation has somewhere to put volumes.
if ! virsh -q -c qemu:///system pool-info default >/dev/null 2>&1; then
  mkdir -p /var/lib/libvirt/images
  virsh -q -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
  virsh -q -c qemu:///system pool-autostart default >/dev/null
fi
virsh -q -c qemu:///system pool-start default >/dev/null 2>&1 || true

# Guest CPU mode that runs here: nested KVM on AMD EPYC aborts with host-model.
# Tests read VAPOR_TEST_DOMAIN_TYPE to pick kvm or qemu (TCG).
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then echo kvm >/run/vapor-test-domain-type
else echo qemu >/run/vapor-test-domain-type; fi

# The Debian 12 test guest (built once, then cached): tests find it in
# /var/cache/vapor-tests/guest/current/ (base.qcow2, vmlinuz, initrd.img).
"$here/guest-image.sh" >/dev/null
log "ready (domain type $(cat /run/vapor-test-domain-type))"
