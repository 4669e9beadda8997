#!/usr/bin/env bash
# Builds (once) and caches a minimal Debian 12 (bookworm) guest for the tests:
# a qcow2 root file system (ext4 on the whole disk, /dev/vda, no partition
# table, no bootloader) plus the kernel and initrd for direct kernel boot:
#
#   <kernel>DIR/vmlinuz</kernel> <initrd>DIR/initrd.img</initrd>
#   <cmdline>root=/dev/vda rw console=ttyS0,115200</cmdline>
#
# The guest has systemd, udev, qemu-guest-agent (started by udev when the
# org.qemu.guest_agent.0 channel appears), cloud-init (NoCloud seed, label
# cidata; read it through virtio-scsi: the cloud kernel has no AHCI),
# nfs-common, systemd-networkd DHCP on en*, a serial getty on ttyS0 and a
# locked root account. Each test VM takes a qcow2 overlay on base.qcow2.
#
# The result lives in /var/cache/vapor-tests/guest/<key>/ (base.qcow2,
# vmlinuz, initrd.img, ready), key = sha256 of this file, so changing the
# recipe rebuilds; /var/cache/vapor-tests/guest/current points at it. Prints
# that directory on stdout, logs on stderr. With the cache present it only
# puts owner and modes back (libvirt's dynamic ownership may have chowned
# the files while a guest ran) and returns at once.
#
# Usage: tests/env/guest-image.sh
#   env: VAPOR_GUEST_CACHE   cache root (default /var/cache/vapor-tests/guest)
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")

# ---------------------------------------------------------------- customize
# `guest-image.sh --customize ROOTFS`: mmdebstrap's customize hook, kept in
# this file so that the cache key covers it.
customize() {
  local r=$1
  # mmdebstrap copies the host's resolv.conf and hostname: drop them.
  rm -f "$r/etc/resolv.conf"
  echo debian >"$r/etc/hostname"
  # Empty machine-id: systemd makes a new one on each first boot.
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  echo '/dev/vda / ext4 rw,discard,errors=remount-ro 0 1' >"$r/etc/fstab"

  # DHCP on any virtio NIC; never wait for a network at boot (a guest
  # without a NIC or DHCP would stall two minutes in wait-online).
  mkdir -p "$r/etc/systemd/network"
  cat >"$r/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en*
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
  chroot "$r" systemctl enable systemd-networkd.service >/dev/null 2>&1
  chroot "$r" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
  # Timers that would only cost CPU in a throw-away test guest.
  chroot "$r" systemctl mask apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service >/dev/null 2>&1

  # cloud-init: NoCloud seed or nothing; without locale C.UTF-8 it ends in
  # "status: error" (no locales in a minbase system).
  cat >"$r/etc/cloud/cloud.cfg.d/90-vapor-tests.cfg" <<'EOF'
datasource_list: [NoCloud, None]
network: {config: disabled}
growpart: {mode: 'off'}
resize_rootfs: false
locale: C.UTF-8
EOF

  # A small initramfs: only what finds /dev/vda (ext4 is built in); the
  # rest (virtio_scsi, sr_mod, isofs, virtio_net, ...) udev and the
  # kernel load from the root file system.
  mkdir -p "$r/etc/initramfs-tools/conf.d" "$r/etc/initramfs-tools/hooks"
  echo 'MODULES=list' >"$r/etc/initramfs-tools/conf.d/vapor-tests"
  printf 'virtio_pci\nvirtio_blk\n' >"$r/etc/initramfs-tools/modules"
  chroot "$r" update-initramfs -u -k all >/dev/null 2>&1

  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin \
    "$r"/var/lib/apt/lists/* "$r"/var/log/*.log "$r"/tmp/*
}

if [ "${1:-}" = --customize ]; then
  customize "$2"
  exit 0
fi

log() { printf '[guest-image] %s\n' "$*" >&2; }

root=${VAPOR_GUEST_CACHE:-/var/cache/vapor-tests/guest}
key=$(sha256sum "$self" | cut -c1-64)
dir=$root/$key

# libvirt chowns images to libvirt-qemu while a guest runs and does not
# always put them back; keep the cache root-owned and world-readable.
fix_modes() {
  chown root:root "$dir" "$dir"/*
  chmod 0755 "$dir"
  chmod 0644 "$dir"/*
}

point_current() {
  if [ "$(readlink "$root/current" 2>/dev/null)" != "$key" ]; then
    ln -sfn "$key" "$root/current.new"
    mv -T "$root/current.new" "$root/current"
  fi
}

if [ -f "$dir/ready" ]; then
  fix_modes
  point_current
  echo "$dir"
  exit 0
fi

# ---------------------------------------------------------------- build
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in mmdebstrap qemu-utils e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Readable by libvirt-qemu all the way down.
(umask 022 && mkdir -p "$root")
chmod 0755 "$root"
exec 9>"$root/.lock"
flock 9
# Another run may have built it while this one waited for the lock.
if [ -f "$dir/ready" ]; then
  fix_modes
  point_current
  echo "$dir"
  exit 0
fi
# Leftovers of interrupted builds are never used: remove them (never
# crossing into a file system an interrupted mmdebstrap left mounted).
rm -rf --one-file-system "$root"/.build.*
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT

start=$SECONDS
log "building a Debian 12 guest image in $tmp (about a minute)"
mmdebstrap --variant=minbase \
  --include=linux-image-cloud-amd64,systemd-sysv,udev,qemu-guest-agent,cloud-init,nfs-common,iproute2,e2fsprogs,netbase \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="\"$self\" --customize \"\$1\"" \
  bookworm "$tmp/rootfs" http://deb.debian.org/debian >"$tmp/mmdebstrap.log" 2>&1 || {
  tail -n 30 "$tmp/mmdebstrap.log" >&2
  exit 1
}
log "mmdebstrap done after $((SECONDS - start)) s"

# Direct kernel boot: kernel and initrd live beside the image, not in it.
cp "$tmp"/rootfs/boot/vmlinuz-* "$tmp/vmlinuz"
cp "$tmp"/rootfs/boot/initrd.img-* "$tmp/initrd.img"
rm -f "$tmp"/rootfs/boot/vmlinuz-* "$tmp"/rootfs/boot/initrd.img-* \
  "$tmp"/rootfs/{vmlinuz,initrd.img}{,.old}

truncate -s 2G "$tmp/base.raw"
mkfs.ext4 -q -F -L root -m 0 -d "$tmp/rootfs" "$tmp/base.raw"
rm -rf "$tmp/rootfs"
qemu-img convert -f raw -O qcow2 "$tmp/base.raw" "$tmp/base.qcow2"
rm -f "$tmp/base.raw" "$tmp/mmdebstrap.log"
: >"$tmp/ready"
chmod 0644 "$tmp"/*
chmod 0755 "$tmp"
sync -f "$tmp/base.qcow2"

# Rename into place (atomic), then point `current` at it and drop old keys.
rm -rf "$dir"
mv -T "$tmp" "$dir"
trap - EXIT
point_current
for old in "$root"/*/; do
  old=${old%/}
  [ "$(basename "$old")" = "$key" ] || [ -L "$old" ] || rm -rf "$old"
done
log "built in $((SECONDS - start)) s: $(du -h --apparent-size "$dir/base.qcow2" | cut -f1) base.qcow2"
echo "$dir"
