#!/usr/bin/env bash
# Set up everything on a fresh machine, build and install vapord, start it on
# the system bus, and walk through a short live demo with vaporctl and busctl
# as a permitted user (vapor-alice, group vapor) and a refused one (vapor-bob).
# vapord keeps running afterwards; stop it with: pkill -x vapord
# Meant for a throwaway machine of this project's kind: it installs the test
# users and the test polkit rules system-wide (tests/env/setup.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || true; }

tests/env/setup.sh
say "building and installing vapord"
packaging/install.sh --prefix /usr --sysconfdir /etc >/dev/null

say "starting vapord on the system bus"
pkill -x vapord 2>/dev/null || true
(setsid /usr/libexec/vapord --replace </dev/null >/var/log/vapord.log 2>&1 &)
for _ in $(seq 100); do
  busctl --system status org.vapor.Virtualization >/dev/null 2>&1 && break
  sleep 0.1
done
busctl --system status org.vapor.Virtualization | grep -E '^(PID|Comm)='

say "defining two demo VMs behind vapord's back, with virsh"
type=$(cat /run/vapor-test-domain-type)
for n in 1 2; do
  name=vapor-demo-$n
  virsh -q -c qemu:///system dominfo "$name" >/dev/null 2>&1 && continue
  printf "<domain type='%s'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices/></domain>" \
    "$type" "$name" >/tmp/$name.xml
  virsh -q -c qemu:///system define /tmp/$name.xml
done
sleep 0.5

say "everyone can list (one GetManagedObjects call)"
run runuser -u vapor-bob -- vaporctl list
run busctl --system tree org.vapor.Virtualization

say "vapor-alice (group vapor) starts a VM; vapor-bob may not stop it"
run runuser -u vapor-alice -- vaporctl start vapor-demo-1
path=$(busctl --system call org.vapor.Virtualization /org/vapor/Virtualization \
  org.vapor.Virtualization.Manager LookupVirtualMachine s vapor-demo-1 | cut -d'"' -f2)
run busctl --system get-property org.vapor.Virtualization "$path" org.vapor.Virtualization.VirtualMachine State
run runuser -u vapor-bob -- vaporctl --no-ask-password force-stop vapor-demo-1
run runuser -u vapor-bob -- busctl --system call org.vapor.Virtualization "$path" org.vapor.Virtualization.VirtualMachine ForceStop
run runuser -u vapor-alice -- busctl --system call org.vapor.Virtualization "$path" org.vapor.Virtualization.VirtualMachine Pause
run runuser -u vapor-alice -- vaporctl show vapor-demo-1
run runuser -u vapor-alice -- vaporctl force-stop vapor-demo-1
run vaporctl list

say "creating a VM from a JSON spec as vapor-alice (dry run first), then deleting it with its storage"
cat >/tmp/vapor-demo-3.json <<JSON
{"name": "vapor-demo-3", "memory": 128,
 "storage": {"default_pool": "default", "disks": [{"action": "create", "size": 1}]},
 "cloud_init": {"user_data": "#cloud-config\nhostname: demo\n"},
 "metadata": {"purpose": "demo"}}
JSON
chmod 644 /tmp/vapor-demo-3.json
run runuser -u vapor-alice -- vaporctl template list
run runuser -u vapor-alice -- vaporctl create --dry-run /tmp/vapor-demo-3.json
run runuser -u vapor-alice -- vaporctl create /tmp/vapor-demo-3.json
run runuser -u vapor-alice -- vaporctl show vapor-demo-3

say "changing it: settings at once, a disk and a NIC hotplugged, a linked clone"
run runuser -u vapor-alice -- vaporctl set vapor-demo-3 vcpus=2 memory=256 title="Demo VM" metadata.owner=alice
run runuser -u vapor-bob -- vaporctl --no-ask-password set vapor-demo-3 vcpus=4
run runuser -u vapor-alice -- vaporctl attach-disk vapor-demo-3 --create default:64M
run runuser -u vapor-alice -- vaporctl detach-disk vapor-demo-3 vdb --remove-storage
run runuser -u vapor-alice -- vaporctl clone vapor-demo-3 vapor-demo-3-clone --linked
run runuser -u vapor-alice -- vaporctl delete --remove-storage vapor-demo-3-clone
run runuser -u vapor-alice -- vaporctl delete --remove-storage vapor-demo-3

say "host PCI devices: drivers, IOMMU groups, and why the host needs some of them"
run vaporctl pci list
disk=$(findmnt -n -o SOURCE / | xargs basename || true)
addr=$(readlink -f "/sys/class/block/$disk" 2>/dev/null | grep -o '[0-9a-f]\{4\}:[0-9a-f]\{2\}:[0-9a-f]\{2\}\.[0-7]' | tail -1 || true)
if [ -n "$addr" ]; then run vaporctl pci check "$addr" --vm vapor-demo-2; fi

say "storage and networks: everyone reads, vapor-alice manages, vapor-bob is refused"
run runuser -u vapor-bob -- vaporctl pool list
run runuser -u vapor-bob -- vaporctl network list
truncate -s 1M /tmp/vapor-demo.iso && chmod 644 /tmp/vapor-demo.iso
run runuser -u vapor-bob -- vaporctl --no-ask-password iso upload /tmp/vapor-demo.iso --pool default
run runuser -u vapor-alice -- vaporctl iso upload /tmp/vapor-demo.iso --pool default
run runuser -u vapor-bob -- vaporctl iso list
run runuser -u vapor-alice -- vaporctl volume delete default/vapor-demo.iso
printf '{"name":"vapor-demo-net","mode":"isolated","start":false,"ipv4":{"address":"10.254.0.1","prefix":24}}' >/tmp/vapor-demo-net.json
chmod 644 /tmp/vapor-demo-net.json
run runuser -u vapor-alice -- vaporctl network create --dry-run /tmp/vapor-demo-net.json
run runuser -u vapor-alice -- vaporctl network create /tmp/vapor-demo-net.json
run runuser -u vapor-alice -- vaporctl network show vapor-demo-net
run runuser -u vapor-alice -- vaporctl network delete vapor-demo-net

say "done"
echo "vapord is still running (log: /var/log/vapord.log). Try: vaporctl --help"
echo "Remove the demo VMs with: vaporctl delete vapor-demo-1; vaporctl delete vapor-demo-2"
