//! Tests of `storage_records.rs`: reading pool and volume XML, sizes and
//! pool state names.

use super::*;

const DIR_POOL: &str = r#"<pool type='dir'>
  <name>default</name>
  <uuid>6a6c4c5e-4d1f-4d7e-9a0b-0c1d2e3f4a5b</uuid>
  <capacity unit='bytes'>105088212992</capacity>
  <allocation unit='bytes'>34359738368</allocation>
  <available unit='bytes'>70728474624</available>
  <source>
  </source>
  <target>
    <path>/var/lib/libvirt/images</path>
    <permissions>
      <mode>0711</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
  </target>
</pool>
"#;

const LOGICAL_POOL: &str = r#"<pool type='logical'>
  <name>vg_vms</name>
  <uuid>1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0</uuid>
  <capacity unit='bytes'>499826819072</capacity>
  <allocation unit='bytes'>107374182400</allocation>
  <available unit='bytes'>392452636672</available>
  <source>
    <device path='/dev/sdb'/>
    <device path='/dev/sdc'/>
    <name>vg_vms</name>
    <format type='lvm2'/>
  </source>
  <target>
    <path>/dev/vg_vms</path>
  </target>
</pool>
"#;

const ISCSI_POOL_NO_TARGET: &str = r#"<pool type="iscsi">
  <name>san</name>
  <source><host name="10.0.0.5"/><device path="iqn.2004-04.com.example:d1"/></source>
</pool>"#;

const QCOW2_OVERLAY: &str = r#"<volume type='file'>
  <name>web &amp; db.qcow2</name>
  <key>/var/lib/libvirt/images/web &amp; db.qcow2</key>
  <capacity unit='bytes'>21474836480</capacity>
  <allocation unit='bytes'>1966080</allocation>
  <physical unit='bytes'>1966080</physical>
  <target>
    <path>/var/lib/libvirt/images/web &amp; db.qcow2</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0600</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
    <timestamps>
      <atime>1700000000.123456789</atime>
      <mtime>1700000000.123456789</mtime>
      <ctime>1700000000.123456789</ctime>
    </timestamps>
    <compat>1.1</compat>
    <clusterSize unit='B'>65536</clusterSize>
    <features/>
  </target>
  <backingStore>
    <path>/var/lib/libvirt/images/jammy-server-cloudimg-amd64.img</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0644</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
  </backingStore>
</volume>
"#;

const ISO_RAW: &str = r#"<volume type='file'>
  <name>ubuntu-22.04.iso</name>
  <key>/srv/isos/ubuntu-22.04.iso</key>
  <capacity unit='bytes'>2097152000</capacity>
  <allocation unit='bytes'>2097156096</allocation>
  <physical unit='bytes'>2097152000</physical>
  <target>
    <path>/srv/isos/ubuntu-22.04.iso</path>
    <format type='iso'/>
  </target>
</volume>
"#;

const LOGICAL_VOLUME: &str = r#"<volume type='block'>
  <name>web-disk</name>
  <key>3Kx0fE-2tYq-ab12-cd34-ef56-gh78-ij90kl</key>
  <capacity unit='GiB'>20</capacity>
  <allocation unit='bytes'>21474836480</allocation>
  <target>
    <path>/dev/vg_vms/web-disk</path>
  </target>
</volume>"#;

#[test]
fn dir_pool_type_and_target() {
    let (kind, target) = parse_pool_xml(DIR_POOL).unwrap();
    assert_eq!(kind, "dir");
    assert_eq!(target, "/var/lib/libvirt/images");
}

#[test]
fn logical_pool_type_and_target() {
    let (kind, target) = parse_pool_xml(LOGICAL_POOL).unwrap();
    assert_eq!((kind.as_str(), target.as_str()), ("logical", "/dev/vg_vms"));
}

#[test]
fn pool_without_target_has_empty_path() {
    let (kind, target) = parse_pool_xml(ISCSI_POOL_NO_TARGET).unwrap();
    assert_eq!((kind.as_str(), target.as_str()), ("iscsi", ""));
}

#[test]
fn pool_xml_that_is_not_a_pool_is_an_error() {
    for bad in [
        QCOW2_OVERLAY,
        "<pool><name>x</name></pool>",
        "<pool type='dir'>",
    ] {
        assert!(
            matches!(parse_pool_xml(bad), Err(Error::Failed(_))),
            "{bad}"
        );
    }
}

#[test]
fn qcow2_volume_with_backing_store() {
    let v = parse_volume_xml(QCOW2_OVERLAY, "6a6c4c5e-4d1f-4d7e-9a0b-0c1d2e3f4a5b").unwrap();
    assert_eq!(
        v,
        VolumeRecord {
            pool_uuid: "6a6c4c5e-4d1f-4d7e-9a0b-0c1d2e3f4a5b".into(),
            name: "web & db.qcow2".into(),
            key: "/var/lib/libvirt/images/web & db.qcow2".into(),
            path: "/var/lib/libvirt/images/web & db.qcow2".into(),
            format: "qcow2".into(),
            kind: "file".into(),
            capacity: 21474836480,
            allocation: 1966080,
            backing_store: "/var/lib/libvirt/images/jammy-server-cloudimg-amd64.img".into(),
        }
    );
}

#[test]
fn iso_volume_without_backing_store() {
    let v = parse_volume_xml(ISO_RAW, "p").unwrap();
    assert_eq!(v.name, "ubuntu-22.04.iso");
    assert_eq!(v.format, "iso");
    assert_eq!(v.kind, "file");
    assert_eq!(v.capacity, 2097152000);
    assert_eq!(v.allocation, 2097156096);
    assert_eq!(v.backing_store, "");
    let raw = ISO_RAW.replace("type='iso'", "type='raw'");
    assert_eq!(parse_volume_xml(&raw, "p").unwrap().format, "raw");
}

#[test]
fn block_volume_with_units_and_no_format() {
    let v = parse_volume_xml(LOGICAL_VOLUME, "p").unwrap();
    assert_eq!(v.kind, "block");
    assert_eq!(v.format, "");
    assert_eq!(v.capacity, 20 << 30);
    assert_eq!(v.allocation, 20 << 30);
    assert_eq!(v.path, "/dev/vg_vms/web-disk");
    assert_eq!(v.key, "3Kx0fE-2tYq-ab12-cd34-ef56-gh78-ij90kl");
}

#[test]
fn sizes_follow_libvirt_units() {
    let cap = |unit: &str| {
        let xml = format!("<volume><name>v</name><capacity unit='{unit}'>3</capacity></volume>");
        parse_volume_xml(&xml, "p").unwrap().capacity
    };
    assert_eq!(cap("bytes"), 3);
    assert_eq!(cap("B"), 3);
    assert_eq!(cap("k"), 3 << 10);
    assert_eq!(cap("KiB"), 3 << 10);
    assert_eq!(cap("KB"), 3000);
    assert_eq!(cap("M"), 3 << 20);
    assert_eq!(cap("GB"), 3_000_000_000);
    assert_eq!(cap("TiB"), 3 << 40);
    assert_eq!(cap("E"), 3 << 60);
}

#[test]
fn malformed_volume_xml_is_an_error() {
    for bad in [
        DIR_POOL,
        "<volume><capacity>1</capacity></volume>",
        "<volume><name>x</name><capacity>lots</capacity></volume>",
        "<volume><name>x</name><capacity unit='parsecs'>1</capacity></volume>",
        "<volume><name>x</name><capacity unit='EiB'>16</capacity></volume>",
        "<volume><name>x</name><capacity unit=''>1</capacity></volume>",
        "<volume><name>x</name><capacity unit='µB'>1</capacity></volume>",
        "<volume><name>x</name><capacity unit='Kb'>1</capacity></volume>",
        "<volume><name>x</name>",
    ] {
        assert!(
            matches!(parse_volume_xml(bad, "p"), Err(Error::Failed(_))),
            "{bad}"
        );
    }
}

#[test]
fn pool_states_have_stable_names() {
    let names: Vec<_> = (0..6).map(state_name).collect();
    assert_eq!(
        names,
        [
            "inactive",
            "building",
            "running",
            "degraded",
            "inaccessible",
            "inaccessible"
        ]
    );
    assert!(lists_volumes("running") && !lists_volumes("inactive"));
}
