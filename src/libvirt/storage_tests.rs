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

#[test]
fn preallocated_qcow2_asks_for_metadata_preallocation() {
    let xml = |fmt: &str, alloc: u64| {
        format!(
            "<volume><name>v</name><capacity unit='bytes'>1024</capacity>\
             <allocation unit='bytes'>{alloc}</allocation>\
             <target><format type='{fmt}'/></target></volume>"
        )
    };
    let prealloc = sys::VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA;
    assert_eq!(create_flags(&xml("qcow2", 1024)), prealloc);
    assert_eq!(create_flags(&xml("qcow2", 0)), 0);
    assert_eq!(create_flags(&xml("raw", 1024)), 0);
    assert_eq!(create_flags("not xml"), 0);
}

#[test]
fn only_a_volume_that_is_gone_is_left_out_of_a_strict_listing() {
    let gone = Error::NotFound("volume x no longer exists".into());
    let flaky = Error::Unavailable("libvirt is not reachable".into());
    assert!(!fails_listing(Unreadable::Fail, &gone));
    assert!(fails_listing(Unreadable::Fail, &flaky));
    assert!(!fails_listing(Unreadable::Skip, &flaky));
    assert!(StorageListing::default().skipped.is_empty());
}

fn file(fd: impl Into<std::os::fd::OwnedFd>) -> std::fs::File {
    std::fs::File::from(fd.into())
}

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn a_regular_file_is_ready_at_once() {
    use std::os::fd::AsFd;
    let f = tempfile::tempfile().unwrap();
    let start = Instant::now();
    for events in [libc::POLLIN, libc::POLLOUT] {
        wait_ready(f.as_fd(), events, &never(), start, IDLE_LIMIT, "idle").unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn an_idle_pipe_times_out_naming_the_side() {
    let (reader, _writer) = std::io::pipe().unwrap();
    let reader = CallerIo::new(file(reader));
    let start = Instant::now();
    let limit = Duration::from_millis(100);
    let e = wait_ready(
        reader.fd(),
        libc::POLLIN,
        &never(),
        start,
        limit,
        "the source sent nothing",
    )
    .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(
        e.to_string().starts_with("the source sent nothing for "),
        "{e}"
    );
    assert!(start.elapsed() >= limit && start.elapsed() < Duration::from_secs(2));
    assert_eq!(IDLE_LIMIT, Duration::from_secs(60));
}

#[test]
fn a_cancelled_wait_stops_at_once() {
    let (reader, _writer) = std::io::pipe().unwrap();
    let reader = CallerIo::new(file(reader));
    let start = Instant::now();
    let e = wait_ready(
        reader.fd(),
        libc::POLLIN,
        &AtomicBool::new(true),
        start,
        IDLE_LIMIT,
        "x",
    )
    .unwrap_err();
    assert_eq!(e, cancelled());
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_pipe_is_read_without_blocking() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let mut reader = CallerIo::new(file(reader));
    assert!(reader.pipe);
    let mut buf = [0u8; 16];
    // Nothing there yet: no byte, and no blocking (where RWF_NOWAIT works).
    if reader.nowait {
        assert!(reader.read(&mut buf).unwrap().is_none());
    }
    writer.write_all(b"abc").unwrap();
    wait_ready(
        reader.fd(),
        libc::POLLIN,
        &never(),
        Instant::now(),
        IDLE_LIMIT,
        "x",
    )
    .unwrap();
    assert_eq!(reader.read(&mut buf).unwrap(), Some(3));
    assert_eq!(&buf[..3], b"abc");
    drop(writer);
    assert_eq!(reader.read(&mut buf).unwrap(), Some(0));
}

#[test]
fn a_full_pipe_is_never_written_to_blocking() {
    let (_reader, writer) = std::io::pipe().unwrap();
    let mut writer = CallerIo::new(file(writer));
    let chunk = vec![1u8; CHUNK];
    let limit = Duration::from_millis(100);
    let mut written = 0;
    let e = loop {
        let since = Instant::now();
        if let Err(e) = wait_ready(
            writer.fd(),
            libc::POLLOUT,
            &never(),
            since,
            limit,
            "the destination took nothing",
        ) {
            break e;
        }
        if let Some(n) = writer.write(&chunk).unwrap() {
            written += n;
        }
        assert!(written <= 16 << 20, "the pipe never filled");
    };
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(written > 0);
    // With RWF_NOWAIT missing, a write takes at most PIPE_BUF bytes.
    let (_r, w) = std::io::pipe().unwrap();
    let mut fallback = CallerIo::new(file(w));
    fallback.nowait = false;
    assert_eq!(fallback.write(&chunk).unwrap(), Some(libc::PIPE_BUF));
}

#[test]
fn write_out_gives_up_on_a_destination_that_takes_nothing() {
    let (_reader, writer) = std::io::pipe().unwrap();
    let mut writer = CallerIo::new(file(writer));
    let cancel = AtomicBool::new(false);
    // Fill the pipe, then cancel: the write stops instead of blocking.
    let big = vec![0u8; 1 << 20];
    let flag = std::sync::Arc::new(cancel);
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
        })
    };
    let start = Instant::now();
    assert_eq!(write_out(&mut writer, &big, &flag), Err(cancelled()));
    assert!(start.elapsed() < Duration::from_secs(5));
    setter.join().unwrap();
}

#[test]
fn write_out_fills_a_regular_file() {
    let mut f = CallerIo::new(tempfile::tempfile().unwrap());
    assert!(!f.pipe && !f.nowait);
    write_out(&mut f, &[5u8; 1000], &never()).unwrap();
    assert_eq!(f.file.metadata().unwrap().len(), 1000);
}
