//! The edits `Update` makes to the larger parts of a definition: the CPU,
//! the boot order, the firmware, the graphics and video devices, and
//! vapord's metadata. Pure; each works on the whole [`Element`] tree.

use std::collections::BTreeMap;

use super::{invalid, BootDevice, CpuChange, FirmwareChange, GraphicsChange};
use crate::libvirt::xml::Element;
use crate::Result;

pub(super) fn edit_cpu(c: &CpuChange, doc: &mut Element) -> Result<()> {
    match (c.mode.as_str(), &c.model) {
        ("custom", None) => return Err(invalid("cpu.model", "is required with mode custom")),
        (m, Some(_)) if m != "custom" => {
            return Err(invalid("cpu.model", "only goes with mode custom"))
        }
        _ => {}
    }
    let after = [
        "features",
        "vcpus",
        "cputune",
        "iothreads",
        "vcpu",
        "resource",
        "sysinfo",
        "bootloader",
        "os",
        "idmap",
    ];
    let cpu = doc.ensure_child("cpu", &after);
    // Topology, NUMA cells and cache stay; the model and its features go
    // with the mode they belonged to.
    cpu.children.retain(|ch| {
        matches!(
            ch.local_name(),
            "topology" | "numa" | "cache" | "maxphysaddr"
        )
    });
    cpu.attrs.clear();
    cpu.set_attr("mode", &c.mode);
    if let Some(model) = &c.model {
        cpu.set_attr("match", "exact");
        cpu.set_attr("check", "none");
        let mut m = Element::with_text("model", model);
        m.set_attr("fallback", "allow");
        cpu.children.insert(0, m);
    } else if c.mode != "host-passthrough" && c.mode != "maximum" {
        cpu.set_attr("check", "partial");
    }
    Ok(())
}

pub(super) fn edit_boot_order(order: &[BootDevice], doc: &mut Element) {
    if let Some(devices) = doc.child_mut("devices") {
        for dev in &mut devices.children {
            dev.remove_children("boot");
        }
    }
    let os = doc.ensure_child(
        "os",
        &[
            "vcpu",
            "iothreads",
            "cputune",
            "resource",
            "sysinfo",
            "bootloader_args",
            "bootloader",
        ],
    );
    os.remove_children("boot");
    let at = os
        .children
        .iter()
        .rposition(|c| {
            matches!(
                c.local_name(),
                "type"
                    | "firmware"
                    | "loader"
                    | "nvram"
                    | "kernel"
                    | "initrd"
                    | "cmdline"
                    | "dtb"
                    | "acpi"
            )
        })
        .map_or(0, |i| i + 1);
    for (i, d) in order.iter().enumerate() {
        os.children
            .insert(at + i, Element::new("boot", &[("dev", d.libvirt())]));
    }
}

pub(super) fn machine_of(doc: &Element) -> String {
    doc.child("os")
        .and_then(|o| o.child("type"))
        .and_then(|t| t.attr("machine"))
        .unwrap_or("")
        .to_owned()
}

pub(super) fn edit_firmware(fw: &FirmwareChange, doc: &mut Element, fresh_id: u32) -> Result<()> {
    let uefi = fw.kind == "uefi";
    if fw.secure_boot.is_some() && !uefi {
        return Err(invalid("firmware.secure_boot", "needs type uefi"));
    }
    let secure = fw.secure_boot == Some(true);
    if secure && !machine_of(doc).contains("q35") {
        return Err(invalid("firmware.secure_boot", "needs machine type q35"));
    }
    let name = doc.child_text("name").unwrap_or("vm").to_owned();
    let os = doc.ensure_child("os", &["vcpu"]);
    // libvirt picks the firmware files anew, and makes a fresh variables
    // file from the new firmware's template: the old one may hold enrolled
    // Secure Boot keys (it stays where it was, like Delete keeps it unless
    // asked).
    let old_vars = os.child("nvram").map(|n| n.text.trim().to_owned());
    os.remove_children("loader");
    os.remove_children("nvram");
    os.remove_children("firmware");
    if let (true, Some(old)) = (uefi, old_vars.filter(|p| p.starts_with('/'))) {
        let dir = old
            .rsplit_once('/')
            .map_or("/var/lib/libvirt/qemu/nvram", |(d, _)| d);
        os.children.push(Element::with_text(
            "nvram",
            &format!("{dir}/{name}_VARS-{fresh_id:08x}.fd"),
        ));
    }
    if uefi {
        os.set_attr("firmware", "efi");
        if let Some(sb) = fw.secure_boot {
            let on = if sb { "yes" } else { "no" };
            let mut f = Element::new("firmware", &[]);
            f.children.push(Element::new(
                "feature",
                &[("enabled", on), ("name", "enrolled-keys")],
            ));
            f.children.push(Element::new(
                "feature",
                &[("enabled", on), ("name", "secure-boot")],
            ));
            let at = os
                .children
                .iter()
                .position(|c| c.local_name() == "type")
                .map_or(0, |i| i + 1);
            os.children.insert(at, f);
        }
    } else {
        os.remove_attr("firmware");
    }
    if secure {
        let features = doc.ensure_child("features", &["os", "idmap"]);
        let smm = features.ensure_child("smm", &[]);
        smm.set_attr("state", "on");
    }
    Ok(())
}

pub(super) fn edit_graphics(g: &GraphicsChange, doc: &mut Element) -> Result<()> {
    let devices = doc.ensure_child("devices", &[]);
    if g.kind != "spice" {
        // What only a SPICE display serves goes with it (libvirt refuses a
        // spicevmc channel, USB redirection or SPICE audio without one).
        devices.children.retain(|d| {
            let kind = d.attr("type");
            !matches!(
                (d.local_name(), kind),
                ("channel", Some("spicevmc"))
                    | ("redirdev", Some("spicevmc"))
                    | ("audio", Some("spice"))
            )
        });
    }
    if g.kind == "none" {
        if g.listen.is_some() {
            return Err(invalid("graphics.listen", "makes no sense with type none"));
        }
        devices.remove_children("graphics");
        return Ok(());
    }
    let old_listen = devices.children_named("graphics").find_map(|el| {
        el.child("listen")
            .and_then(|l| l.attr("address"))
            .or_else(|| el.attr("listen"))
            .map(str::to_owned)
    });
    let listen = match g.listen.as_deref() {
        Some("localhost") => "127.0.0.1".to_owned(),
        Some(a) => a.to_owned(),
        None => old_listen.unwrap_or_else(|| "127.0.0.1".into()),
    };
    let pos = devices
        .children
        .iter()
        .position(|c| c.local_name() == "graphics" && c.attr("type") == Some(g.kind.as_str()));
    // Same protocol: keep its password and options, change the address.
    let kept = match pos {
        Some(i) => devices.children.remove(i),
        None => Element::new("graphics", &[("type", &g.kind), ("autoport", "yes")]),
    };
    devices.remove_children("graphics");
    devices.children.push(kept);
    let el = devices.children.last_mut().expect("just pushed");
    el.remove_attr("listen");
    el.remove_children("listen");
    el.children.insert(
        0,
        Element::new("listen", &[("type", "address"), ("address", &listen)]),
    );
    Ok(())
}

pub(super) fn edit_video(model: &str, doc: &mut Element) {
    let devices = doc.ensure_child("devices", &[]);
    let video = devices.ensure_child("video", &["graphics", "sound", "audio"]);
    video.children.retain(|c| c.local_name() == "address");
    video
        .children
        .insert(0, Element::new("model", &[("type", model)]));
}

/// Merge `changes` into vapord's metadata element of `doc`; returns the
/// element as XML (for the running VM).
pub(super) fn merge_metadata(
    doc: &mut Element,
    changes: &BTreeMap<String, Option<String>>,
) -> Result<String> {
    let vm = doc.vapor_metadata_mut();
    for (key, value) in changes {
        vm.children
            .retain(|c| !(c.local_name() == "custom" && c.attr("key") == Some(key.as_str())));
        if let Some(v) = value {
            let mut el = vm.new_child("custom", &[("key", key)]);
            el.text = v.clone();
            vm.children.push(el);
        }
    }
    let count = vm
        .children
        .iter()
        .filter(|c| c.local_name() == "custom")
        .count();
    if count > 64 {
        return Err(invalid(
            "metadata",
            format!("{count} keys are more than 64"),
        ));
    }
    Ok(vm.without_namespaces().to_xml())
}
