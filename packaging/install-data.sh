#!/usr/bin/env bash
# Installs vapor's data files - everything that is installed rather than
# compiled: polkit actions, D-Bus policy, activation and interface files, the
# systemd unit, the example polkit rules, the shipped VM templates and the
# default configuration.
#
# Usage: packaging/install-data.sh [--prefix DIR] [--sysconfdir DIR]
#                                  [--systemdunitdir DIR] [--destdir DIR]
#   --prefix          default /usr
#   --sysconfdir      default /etc
#   --systemdunitdir  default /lib/systemd/system when the prefix is /usr,
#                     $prefix/lib/systemd/system otherwise
#   --destdir         staging root for package builds (default: none)
#
# Safe to run again: files are replaced with the repository's copies, except
# $sysconfdir/vapor/vapord.toml, which is only installed when absent (it is
# the administrator's file).  The unit and the activation file name the
# daemon as $prefix/libexec/vapord.  Note that dbus-daemon and polkitd only
# read /usr/share (and /etc): with another prefix, link or copy the policy
# files there.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr
sysconfdir=/etc
unitdir=
destdir=

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
need_arg() { [ $# -ge 2 ] || { echo "install-data.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix)         need_arg "$@"; prefix=$2; shift 2 ;;
    --prefix=*)       prefix=${1#*=}; shift ;;
    --sysconfdir)     need_arg "$@"; sysconfdir=$2; shift 2 ;;
    --sysconfdir=*)   sysconfdir=${1#*=}; shift ;;
    --systemdunitdir) need_arg "$@"; unitdir=$2; shift 2 ;;
    --systemdunitdir=*) unitdir=${1#*=}; shift ;;
    --destdir)        need_arg "$@"; destdir=$2; shift 2 ;;
    --destdir=*)      destdir=${1#*=}; shift ;;
    -h|--help)        usage; exit 0 ;;
    *) echo "install-data.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$unitdir" ]; then
  if [ "$prefix" = /usr ]; then unitdir=/lib/systemd/system; else unitdir=$prefix/lib/systemd/system; fi
fi
destdir=${destdir%/}

# put SRC DEST: install one file (mode 0644), creating DEST's directories.
put() {
  install -D -m 0644 "$top/$1" "$destdir$2"
  echo "installed $destdir$2"
}

# put_exec SRC DEST: like put, with the daemon's path adjusted to $prefix.
put_exec() {
  local tmp
  tmp=$(mktemp)
  sed "s|/usr/libexec/vapord|$prefix/libexec/vapord|g" "$top/$1" >"$tmp"
  install -D -m 0644 "$tmp" "$destdir$2"
  rm -f "$tmp"
  echo "installed $destdir$2"
}

put polkit/org.vapor.virtualization.policy "$prefix/share/polkit-1/actions/org.vapor.virtualization.policy"
put dbus/org.vapor.Virtualization.conf     "$prefix/share/dbus-1/system.d/org.vapor.Virtualization.conf"
put_exec dbus/org.vapor.Virtualization.service "$prefix/share/dbus-1/system-services/org.vapor.Virtualization.service"
put_exec systemd/vapord.service            "$unitdir/vapord.service"
put polkit/50-vapor.rules.example          "$prefix/share/doc/vapor/50-vapor.rules.example"

# Interface descriptions, when the repository has them.
shopt -s nullglob
for xml in "$top"/dbus/org.vapor.Virtualization.*.xml; do
  name=$(basename "$xml")
  put "dbus/$name" "$prefix/share/dbus-1/interfaces/$name"
done

# Shipped VM templates (read-only for vapord; replaced on every install, the
# administrator's own templates belong in the state directory).
for tpl in "$top"/packaging/templates/*.json; do
  name=$(basename "$tpl")
  put "packaging/templates/$name" "$sysconfdir/vapor/templates.d/$name"
done
shopt -u nullglob

# The administrator's configuration: never overwritten.
conf="$destdir$sysconfdir/vapor/vapord.toml"
if [ -e "$conf" ]; then
  echo "kept existing $conf"
else
  install -D -m 0644 "$top/packaging/vapord.toml" "$conf"
  echo "installed $conf"
fi
