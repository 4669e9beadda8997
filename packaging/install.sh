#!/usr/bin/env bash
# Builds vapor and installs it: the daemon to $prefix/libexec/vapord, the
# command-line client to $prefix/bin/vaporctl, then every data file through
# install-data.sh (which takes the same arguments).
#
# Usage: packaging/install.sh [--prefix DIR] [--sysconfdir DIR]
#                             [--systemdunitdir DIR] [--destdir DIR]
#                             [--no-build]
#   --no-build   install the binaries already in target/release
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr
destdir=
build=yes
data_args=()

while [ $# -gt 0 ]; do
  case "$1" in
    --no-build)  build=no; shift ;;
    --prefix)    [ $# -ge 2 ] || { echo "install.sh: --prefix needs a value" >&2; exit 2; }
                 prefix=$2; data_args+=("$1" "$2"); shift 2 ;;
    --prefix=*)  prefix=${1#*=}; data_args+=("$1"); shift ;;
    --destdir)   [ $# -ge 2 ] || { echo "install.sh: --destdir needs a value" >&2; exit 2; }
                 destdir=$2; data_args+=("$1" "$2"); shift 2 ;;
    --destdir=*) destdir=${1#*=}; data_args+=("$1"); shift ;;
    -h|--help)   awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --sysconfdir|--systemdunitdir)
                 [ $# -ge 2 ] || { echo "install.sh: $1 needs a value" >&2; exit 2; }
                 data_args+=("$1" "$2"); shift 2 ;;
    --sysconfdir=*|--systemdunitdir=*)
                 data_args+=("$1"); shift ;;
    *)           echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
destdir=${destdir%/}

if [ "$build" = yes ]; then
  (cd "$top" && cargo build --release --locked)
fi

install -D -m 0755 "$top/target/release/vapord"   "$destdir$prefix/libexec/vapord"
echo "installed $destdir$prefix/libexec/vapord"
install -D -m 0755 "$top/target/release/vaporctl" "$destdir$prefix/bin/vaporctl"
echo "installed $destdir$prefix/bin/vaporctl"

exec "$top/packaging/install-data.sh" ${data_args[@]+"${data_args[@]}"}
