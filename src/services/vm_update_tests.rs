use super::*;

const CONFIG: &str = r#"<domain type='kvm'>
  <name>web</name>
  <uuid>0b7f1c2e-0000-4000-8000-000000000001</uuid>
  <metadata>
    <vapor:vm xmlns:vapor="https://vapor.dev/xmlns/domain/1"><vapor:created-by uid="1000"/><vapor:custom key="team">blue</vapor:custom><vapor:volume path="/p/a.qcow2"/></vapor:vm>
    <other:x xmlns:other="urn:other">kept</other:x>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/></firmware>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/><smm state='on'/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model><feature policy='require' name='x2apic'/><topology sockets='1' dies='1' cores='2' threads='1'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/p/a.qcow2'/><target dev='vda' bus='virtio'/><boot order='1'/></disk>
    <graphics type='vnc' port='-1' autoport='yes' passwd='secret'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='qxl' ram='65536' vram='65536' heads='1' primary='yes'/><address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></video>
    <unknown-device weird='1'>keep me</unknown-device>
  </devices>
</domain>"#;

fn config() -> Element {
    Element::parse(CONFIG).unwrap()
}

fn stopped() -> Facts {
    Facts {
        running: false,
        live_max_vcpus: 0,
        live_max_memory_kib: 0,
        host_max_vcpus: 64,
        host_memory_mib: 16384,
        fresh_id: 0xabc,
    }
}

fn running() -> Facts {
    Facts {
        running: true,
        live_max_vcpus: 4,
        live_max_memory_kib: 2 * 1024 * 1024,
        ..stopped()
    }
}

fn changes(json: &str) -> VmChanges {
    serde_json::from_str(json).unwrap()
}

fn planned(json: &str, facts: Facts) -> UpdatePlan {
    plan(&changes(json), &config(), &facts).unwrap()
}

#[test]
fn what_vapord_does_not_model_survives_every_edit() {
    let p = planned(
        r#"{"vcpus":3,"memory":1536,"cpu":{"mode":"host-model"},"boot_order":["cdrom","disk"],
            "firmware":{"type":"uefi","secure_boot":false},"graphics":{"type":"vnc","listen":"0.0.0.0"},
            "video":"virtio","metadata":{"owner":"x"},"title":"T","description":"D"}"#,
        stopped(),
    );
    let doc = p.config.unwrap();
    let again = Element::parse(&doc.to_xml()).unwrap();
    let devices = again.child("devices").unwrap();
    assert_eq!(devices.child_text("unknown-device"), Some("keep me"));
    assert_eq!(
        devices.child("emulator").unwrap().text,
        "/usr/bin/qemu-system-x86_64"
    );
    let metadata = again.child("metadata").unwrap();
    assert_eq!(metadata.child_text("x"), Some("kept"));
    let vm = metadata.child("vm").unwrap();
    assert!(vm.child("created-by").is_some() && vm.child("volume").is_some());
    let g = devices.child("graphics").unwrap();
    assert_eq!(g.attr("passwd"), Some("secret"), "the password stays");
    assert_eq!(g.child("listen").unwrap().attr("address"), Some("0.0.0.0"));
    // 3 vCPUs do not fit 2 cores per socket: three single-core sockets.
    let t = again
        .child("cpu")
        .unwrap()
        .child("topology")
        .unwrap()
        .clone();
    assert_eq!((t.attr("sockets"), t.attr("cores")), (Some("3"), Some("1")));
}

#[test]
fn a_stopped_vm_has_nothing_pending() {
    let p = planned(r#"{"vcpus":4,"memory":2048,"video":"virtio"}"#, stopped());
    assert!(p.pending.is_empty());
    assert!(p.live.is_empty());
    assert_eq!(
        p.changed,
        ["vcpus", "max_vcpus", "memory", "max_memory", "video"]
    );
    let doc = p.config.unwrap();
    assert_eq!(doc.child("vcpu").unwrap().text, "4");
    assert_eq!(doc.child("vcpu").unwrap().attr("current"), None);
    assert_eq!(
        memory_kib(doc.child("currentMemory").unwrap()),
        Some(2 * 1024 * 1024)
    );
    // cores × threads (2) divide 4: two sockets.
    let t = doc.child("cpu").unwrap().child("topology").unwrap().clone();
    assert_eq!((t.attr("sockets"), t.attr("cores")), (Some("2"), Some("2")));
}

#[test]
fn within_the_running_maximum_vcpus_and_memory_change_live() {
    let p = planned(r#"{"vcpus":1,"memory":512}"#, running());
    assert_eq!(
        p.live,
        [LiveStep::Vcpus(1), LiveStep::MemoryKib(512 * 1024)]
    );
    assert!(p.pending.is_empty(), "{:?}", p.pending);
    let doc = p.config.unwrap();
    assert_eq!(doc.child("vcpu").unwrap().attr("current"), Some("1"));
    assert_eq!(doc.child("vcpu").unwrap().text, "2");
}

#[test]
fn beyond_the_running_maximum_waits_for_the_next_start() {
    let p = planned(r#"{"vcpus":6,"memory":4096}"#, running());
    assert!(p.live.is_empty());
    assert_eq!(p.pending, ["max_vcpus", "vcpus", "max_memory", "memory"]);
    let p = planned(
        r#"{"max_vcpus":8,"cpu":{"mode":"host-passthrough"},"firmware":{"type":"bios"},"boot_order":["network"]}"#,
        running(),
    );
    assert_eq!(p.pending, ["max_vcpus", "cpu", "boot_order", "firmware"]);
}

#[test]
fn limits_and_contradictions_name_the_field() {
    let err = |json: &str, f: Facts| plan(&changes(json), &config(), &f).unwrap_err().to_string();
    assert!(err(r#"{"vcpus":3,"max_vcpus":2}"#, stopped())
        .contains("vcpus: 3 is more than max_vcpus (2)"));
    assert!(err(r#"{"max_vcpus":65}"#, stopped()).contains("max_vcpus: 65 is more than"));
    assert!(err(r#"{"memory":4096,"max_memory":2048}"#, stopped())
        .contains("memory: 4096 MiB is more than max_memory"));
    assert!(err(r#"{"memory":32768}"#, stopped())
        .contains("memory: 32768 MiB is more than the host's memory"));
    assert!(err(r#"{"name":"other"}"#, running()).contains("only be renamed while it is shut off"));
    assert!(err(r#"{"cpu":{"mode":"custom"}}"#, stopped()).contains("cpu.model: is required"));
    assert!(
        err(r#"{"cpu":{"mode":"host-model","model":"x"}}"#, stopped())
            .contains("cpu.model: only goes")
    );
    assert!(err(
        r#"{"firmware":{"type":"bios","secure_boot":true}}"#,
        stopped()
    )
    .contains("firmware.secure_boot: needs type uefi"));
}

#[test]
fn secure_boot_can_be_turned_off_and_libvirt_picks_the_firmware_again() {
    let p = planned(
        r#"{"firmware":{"type":"uefi","secure_boot":false}}"#,
        stopped(),
    );
    let os = p.config.unwrap().child("os").unwrap().clone();
    assert_eq!(os.attr("firmware"), Some("efi"));
    assert!(os.child("loader").is_none());
    assert_eq!(
        os.child("nvram").unwrap().text,
        "/var/lib/libvirt/qemu/nvram/web_VARS-00000abc.fd",
        "fresh variables from the new template, not the ones with the enrolled keys"
    );
    let features: Vec<_> = os
        .child("firmware")
        .unwrap()
        .children
        .iter()
        .map(|f| (f.attr("name").unwrap(), f.attr("enabled").unwrap()))
        .collect();
    assert_eq!(features, [("enrolled-keys", "no"), ("secure-boot", "no")]);
    let p = planned(r#"{"firmware":{"type":"bios"}}"#, stopped());
    let os = p.config.unwrap().child("os").unwrap().clone();
    assert_eq!(os.attr("firmware"), None);
    assert!(os.child("firmware").is_none());
}

#[test]
fn boot_order_replaces_per_device_order() {
    let p = planned(r#"{"boot_order":["cdrom","disk","network"]}"#, stopped());
    let doc = p.config.unwrap();
    let os = doc.child("os").unwrap();
    let devs: Vec<_> = os
        .children_named("boot")
        .map(|b| b.attr("dev").unwrap())
        .collect();
    assert_eq!(devs, ["cdrom", "hd", "network"]);
    let disk = doc.child("devices").unwrap().child("disk").unwrap();
    assert!(disk.child("boot").is_none());
}

#[test]
fn metadata_merges_and_null_removes() {
    let p = planned(r#"{"metadata":{"team":null,"env":"prod"}}"#, running());
    let doc = p.config.unwrap();
    let vm = doc.child("metadata").unwrap().child("vm").unwrap();
    let customs: Vec<_> = vm
        .children_named("custom")
        .map(|c| (c.attr("key").unwrap(), c.text.as_str()))
        .collect();
    assert_eq!(customs, [("env", "prod")]);
    assert!(matches!(&p.live[..], [LiveStep::Metadata(x)] if x.contains("env")));
}

#[test]
fn graphics_change_protocol_or_go_away() {
    let p = planned(r#"{"graphics":{"type":"spice"}}"#, stopped());
    let doc = p.config.unwrap();
    let g: Vec<_> = doc
        .child("devices")
        .unwrap()
        .children_named("graphics")
        .collect();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].attr("type"), Some("spice"));
    assert_eq!(
        g[0].child("listen").unwrap().attr("address"),
        Some("127.0.0.1")
    );
    let p = planned(r#"{"graphics":{"type":"none"}}"#, stopped());
    assert!(p
        .config
        .unwrap()
        .child("devices")
        .unwrap()
        .child("graphics")
        .is_none());
}

#[test]
fn title_description_autostart_and_rename() {
    let p = planned(
        r#"{"title":"Web","description":"a\nb","autostart":true,"name":"web2"}"#,
        stopped(),
    );
    assert_eq!(p.rename.as_deref(), Some("web2"));
    assert_eq!(p.autostart, Some(true));
    let doc = p.config.unwrap();
    assert_eq!(doc.children[2].name, "title");
    assert_eq!(doc.child_text("description"), Some("a\nb"));
    let p = planned(r#"{"autostart":false}"#, running());
    assert!(p.config.is_none(), "nothing to define");
    let p = planned(r#"{"name":"web"}"#, stopped());
    assert!(p.rename.is_none(), "same name: nothing to do");
}

#[test]
fn video_keeps_its_address() {
    let p = planned(r#"{"video":"virtio"}"#, stopped());
    let doc = p.config.unwrap();
    let v = doc.child("devices").unwrap().child("video").unwrap();
    assert_eq!(
        v.child("model").unwrap().attrs,
        vec![("type".to_string(), "virtio".to_string())]
    );
    assert!(v.child("address").is_some());
}

#[test]
fn memory_units_are_read_as_libvirt_writes_them() {
    let el =
        |u: &str, v: &str| Element::parse(&format!("<memory unit='{u}'>{v}</memory>")).unwrap();
    assert_eq!(memory_kib(&el("KiB", "1024")), Some(1024));
    assert_eq!(memory_kib(&el("MiB", "2")), Some(2048));
    assert_eq!(memory_kib(&el("GiB", "1")), Some(1024 * 1024));
    assert_eq!(memory_kib(&el("b", "2048")), Some(2));
    assert_eq!(memory_kib(&el("parsecs", "1")), None);
}

#[test]
fn leaving_spice_takes_what_only_spice_serves() {
    let mut def = config();
    let devices = def.child_mut("devices").unwrap();
    devices.children.push(
        Element::parse(
            "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
        )
        .unwrap(),
    );
    devices
        .children
        .push(Element::parse("<redirdev bus='usb' type='spicevmc'/>").unwrap());
    devices
        .children
        .push(Element::parse("<audio id='1' type='spice'/>").unwrap());
    devices.children.push(
        Element::parse(
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
        )
        .unwrap(),
    );
    let p = plan(&changes(r#"{"graphics":{"type":"vnc"}}"#), &def, &stopped()).unwrap();
    let doc = p.config.unwrap();
    let devices = doc.child("devices").unwrap();
    let channels: Vec<_> = devices
        .children_named("channel")
        .map(|c| c.attr("type").unwrap())
        .collect();
    assert_eq!(channels, ["unix"], "the agent's channel stays");
    assert!(devices.child("redirdev").is_none() && devices.child("audio").is_none());
}
