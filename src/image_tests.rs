//! Tests of `image`: real images made with `qemu-img`, and handcrafted headers.

use super::*;
use std::fs;
use std::net::TcpListener;
use std::process::Command;

fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("qemu-img not installed: skipping");
    }
    ok
}

/// Runs `qemu-img` in `dir`, which must succeed (within a minute: a
/// mistake in a test must not make qemu-img hang on a network name).
fn qemu_img(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("qemu-img");
    cmd.current_dir(dir).args(args);
    let out = crate::process::run(cmd, std::time::Duration::from_secs(60), "qemu-img").unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img create -f FORMAT [extra…] NAME 1M` in `dir`.
fn create(dir: &Path, format: &str, name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["create", "-q", "-f", format];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[name, "1M"]);
    qemu_img(dir, &args);
    dir.join(name)
}

fn canon(p: &Path) -> String {
    fs::canonicalize(p).unwrap().to_str().unwrap().to_owned()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn link(path: &Path, format: Option<&str>, role: LinkRole, named_as: &str) -> ChainLink {
    ChainLink {
        path: canon(path),
        format: format.map(str::to_owned),
        role,
        named_as: named_as.to_owned(),
    }
}

fn backing(path: &Path, format: Option<&str>, named_as: &str) -> ChainLink {
    link(path, format, LinkRole::Backing, named_as)
}

/// A minimal qcow2 version 3 header (64 KiB clusters, 1 MiB): `exts` after
/// the header, the end marker, then the backing file name.
fn craft(backing: Option<&[u8]>, exts: &[(u32, &[u8])]) -> Vec<u8> {
    let mut h = vec![0u8; 104];
    h[..4].copy_from_slice(QCOW_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    for (kind, data) in exts {
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&(data.len() as u32).to_be_bytes());
        h.extend_from_slice(data);
        h.resize(h.len().next_multiple_of(8), 0);
    }
    h.extend_from_slice(&[0; 8]);
    if let Some(name) = backing {
        let at = h.len() as u64;
        h[8..16].copy_from_slice(&at.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h.extend_from_slice(name);
    }
    h
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn malformed(path: &Path) -> String {
    match backing_chain(path) {
        Err(ImageError::Malformed { why, .. }) => why,
        other => panic!("expected Malformed for {}, got {other:?}", path.display()),
    }
}

#[test]
fn a_raw_image_has_no_chain() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let raw = create(tmp.path(), "raw", "disk.raw", &[]);
    assert_eq!(probe_format(&raw).unwrap(), None);
    assert_eq!(backing_chain(&raw).unwrap(), []);
}

#[test]
fn a_missing_image_has_no_chain() {
    let tmp = tempdir();
    assert_eq!(backing_chain(&tmp.path().join("nope.qcow2")).unwrap(), []);
    assert!(matches!(
        probe_format(&tmp.path().join("nope.qcow2")),
        Err(ImageError::Io { .. })
    ));
}

#[test]
fn qcow2_over_qcow2_over_raw() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let base = create(d, "raw", "base.raw", &[]);
    let base_s = base.to_str().unwrap();
    let mid = create(d, "qcow2", "mid.qcow2", &["-b", base_s, "-F", "raw"]);
    let mid_s = mid.to_str().unwrap();
    let top = create(d, "qcow2", "top.qcow2", &["-b", mid_s, "-F", "qcow2"]);
    assert_eq!(probe_format(&top).unwrap(), Some("qcow2"));
    assert_eq!(
        backing_chain(&top).unwrap(),
        [
            backing(&mid, Some("qcow2"), mid_s),
            backing(&base, Some("raw"), base_s),
        ]
    );
    // The middle image alone.
    assert_eq!(
        backing_chain(&mid).unwrap(),
        [backing(&base, Some("raw"), base_s)]
    );
}

#[test]
fn relative_names_resolve_against_the_naming_image() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    fs::create_dir_all(d.join("base")).unwrap();
    fs::create_dir_all(d.join("vm")).unwrap();
    let base = create(&d.join("base"), "raw", "base.raw", &[]);
    let mid = create(
        &d.join("base"),
        "qcow2",
        "mid.qcow2",
        &["-b", "base.raw", "-F", "raw"],
    );
    let top = create(
        &d.join("vm"),
        "qcow2",
        "top.qcow2",
        &["-b", "../base/mid.qcow2", "-F", "qcow2"],
    );
    // The test process's working directory is elsewhere.
    assert_eq!(
        backing_chain(&top).unwrap(),
        [
            backing(&mid, Some("qcow2"), "../base/mid.qcow2"),
            backing(&base, Some("raw"), "base.raw"),
        ]
    );
}

#[test]
fn relative_names_resolve_against_the_directory_the_image_was_named_in() {
    // As QEMU does: an image reached through a symlink resolves a relative
    // name against the symlink's directory, not its target's.
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    fs::create_dir_all(d.join("a")).unwrap();
    fs::create_dir_all(d.join("b")).unwrap();
    create(&d.join("a"), "raw", "base.raw", &[]);
    let b_base = create(&d.join("b"), "raw", "base.raw", &[]);
    create(
        &d.join("a"),
        "qcow2",
        "top.qcow2",
        &["-b", "base.raw", "-F", "raw"],
    );
    std::os::unix::fs::symlink("../a/top.qcow2", d.join("b/top-link")).unwrap();
    assert_eq!(
        backing_chain(&d.join("b/top-link")).unwrap(),
        [backing(&b_base, Some("raw"), "base.raw")]
    );
}

#[test]
fn a_symlinked_backing_file_is_reported_by_its_target() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    fs::create_dir_all(d.join("store")).unwrap();
    let real = create(&d.join("store"), "raw", "base.raw", &[]);
    std::os::unix::fs::symlink("store/base.raw", d.join("link.raw")).unwrap();
    let top = create(d, "qcow2", "top.qcow2", &["-b", "link.raw", "-F", "raw"]);
    let chain = backing_chain(&top).unwrap();
    assert_eq!(chain, [backing(&real, Some("raw"), "link.raw")]);
    assert!(chain[0].path.ends_with("/store/base.raw"));
}

#[test]
fn a_missing_backing_file_ends_the_chain_with_its_absolute_path() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let top = create(
        d,
        "qcow2",
        "top.qcow2",
        &["-u", "-b", "gone/base.qcow2", "-F", "qcow2"],
    );
    let chain = backing_chain(&top).unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(
        chain[0].path,
        format!("{}/gone/base.qcow2", d.display()),
        "{chain:?}"
    );
    assert_eq!(chain[0].named_as, "gone/base.qcow2");
}

#[test]
fn network_names_are_refused_without_connecting() {
    if !have_qemu_img() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tmp = tempdir();
    let d = tmp.path();
    let names = [
        format!("nbd://127.0.0.1:{port}/x"),
        format!("nbd:127.0.0.1:{port}:exportname=x"),
        format!("http://127.0.0.1:{port}/x.img"),
        format!(
            r#"json:{{"file":{{"driver":"nbd","server":{{"type":"inet","host":"127.0.0.1","port":"{port}"}},"export":"x"}}}}"#
        ),
    ];
    for (i, name) in names.iter().enumerate() {
        let file = format!("top{i}.qcow2");
        let top = create(d, "qcow2", &file, &["-u", "-b", name, "-F", "raw"]);
        assert_eq!(
            backing_chain(&top),
            Err(ImageError::NotLocal {
                image: canon(&top),
                name: name.clone(),
            })
        );
        // And through the entry point storage ownership and creation use.
        let err = crate::image::backing_chain_paths(top.to_str().unwrap()).unwrap_err();
        assert!(err.contains(name.as_str()), "{err}");
    }
    // The same names as a lower image's backing file.
    let mid = create(
        d,
        "qcow2",
        "mid.qcow2",
        &["-u", "-b", &names[0], "-F", "raw"],
    );
    let top = create(
        d,
        "qcow2",
        "over.qcow2",
        // -u: qemu-img itself would connect while checking the chain.
        &["-u", "-b", mid.to_str().unwrap(), "-F", "qcow2"],
    );
    assert!(matches!(
        backing_chain(&top),
        Err(ImageError::NotLocal { image, .. }) if image == canon(&mid)
    ));
    match listener.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the listener: {other:?}"),
    }
}

#[test]
fn only_local_file_names_are_followed() {
    let tmp = tempdir();
    let d = tmp.path();
    let refused = [
        "nbd+unix:///x?socket=/run/x.sock",
        "ssh://host/disk.img",
        "gluster://host/vol/disk.img",
        "https://example.org/disk.img",
        "iscsi://host/iqn.x/0",
        "rbd:pool/image",
        "vvfat:/tmp",
        "host:disk.raw",
        "file:relative.raw",
        "file:nbd://127.0.0.1:1/x",
        "file:",
    ];
    for name in refused {
        let top = write(d, "top.qcow2", &craft(Some(name.as_bytes()), &[]));
        assert_eq!(
            backing_chain(&top),
            Err(ImageError::NotLocal {
                image: canon(&top),
                name: name.to_owned()
            }),
            "{name}"
        );
    }
    // A colon after the first slash is part of a file name.
    fs::create_dir_all(d.join("dir")).unwrap();
    let odd = write(d, "dir/a:b.raw", b"raw");
    let top = write(d, "top.qcow2", &craft(Some(b"dir/a:b.raw"), &[]));
    assert_eq!(
        backing_chain(&top).unwrap(),
        [backing(&odd, None, "dir/a:b.raw")]
    );
    // `file:` before an absolute path is stripped.
    let named = format!("file:{}", odd.display());
    let top = write(d, "top.qcow2", &craft(Some(named.as_bytes()), &[]));
    assert_eq!(backing_chain(&top).unwrap(), [backing(&odd, None, &named)]);
}

#[test]
fn messages_escape_control_characters() {
    let e = ImageError::NotLocal {
        image: "/x.qcow2".into(),
        name: "nbd://h/x\nfake log line".into(),
    };
    let shown = e.to_string();
    assert!(!shown.contains('\n'), "{shown}");
    assert!(shown.contains("'nbd://h/x\\nfake log line'"), "{shown}");
    let e = ImageError::Unsupported {
        image: "/x".into(),
        format: "vm\rdk".into(),
    };
    assert!(e.to_string().starts_with("/x is a vm\\rdk image;"), "{e}");
}

#[test]
fn a_loop_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let b = create(d, "qcow2", "b.qcow2", &[]);
    let a = create(d, "qcow2", "a.qcow2", &["-b", "b.qcow2", "-F", "qcow2"]);
    qemu_img(
        d,
        &["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"],
    );
    assert_eq!(backing_chain(&a), Err(ImageError::Loop { path: canon(&a) }));
    assert_eq!(backing_chain(&b), Err(ImageError::Loop { path: canon(&b) }));
    // An image backed by itself, through a symlink.
    std::os::unix::fs::symlink("self.qcow2", d.join("self-link")).unwrap();
    let s = create(
        d,
        "qcow2",
        "self.qcow2",
        &["-u", "-b", "self-link", "-F", "qcow2"],
    );
    assert_eq!(backing_chain(&s), Err(ImageError::Loop { path: canon(&s) }));
}

#[test]
fn the_chain_depth_is_bounded() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    create(d, "raw", "l0.img", &[]);
    for i in 1..=MAX_DEPTH + 1 {
        let below = format!("l{}.img", i - 1);
        let fmt = if i == 1 { "raw" } else { "qcow2" };
        create(d, "qcow2", &format!("l{i}.img"), &["-b", &below, "-F", fmt]);
    }
    let deepest_allowed = d.join(format!("l{MAX_DEPTH}.img"));
    assert_eq!(backing_chain(&deepest_allowed).unwrap().len(), MAX_DEPTH);
    let too_deep = d.join(format!("l{}.img", MAX_DEPTH + 1));
    assert_eq!(
        backing_chain(&too_deep),
        Err(ImageError::TooDeep {
            image: too_deep.display().to_string(),
            limit: MAX_DEPTH
        })
    );
}

#[test]
fn an_external_data_file_is_reported() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    // An absolute name: reported with its role.
    let data = d.join("data.raw");
    let data_s = data.to_str().unwrap().to_owned();
    let opt = format!("data_file={data_s}");
    let img = create(d, "qcow2", "abs.qcow2", &["-o", &opt]);
    assert_eq!(
        backing_chain(&img).unwrap(),
        [link(&data, None, LinkRole::DataFile, &data_s)]
    );

    // With a backing file too.
    let base = create(d, "raw", "base.raw", &[]);
    let data2 = d.join("data2.raw");
    let opt = format!("data_file={}", data2.display());
    let img = create(
        d,
        "qcow2",
        "both.qcow2",
        &["-o", &opt, "-b", "base.raw", "-F", "raw"],
    );
    assert_eq!(
        backing_chain(&img).unwrap(),
        [
            link(&data2, None, LinkRole::DataFile, data2.to_str().unwrap()),
            backing(&base, Some("raw"), "base.raw"),
        ]
    );

    // A relative name: QEMU opens it relative to its own working directory
    // (not the image's), so which file it means is unknown: refused.
    let img = create(d, "qcow2", "x.qcow2", &["-o", "data_file=data.raw"]);
    assert_eq!(
        backing_chain(&img),
        Err(ImageError::RelativeDataFile {
            image: canon(&img),
            name: "data.raw".into()
        })
    );

    // A network data file.
    let img = write(
        d,
        "net.qcow2",
        &craft(None, &[(EXT_DATA_FILE, b"nbd://127.0.0.1:1/x")]),
    );
    assert!(matches!(
        backing_chain(&img),
        Err(ImageError::NotLocal { name, .. }) if name == "nbd://127.0.0.1:1/x"
    ));
    // The image as its own data file.
    let own = d.join("own.qcow2");
    let name = own.to_str().unwrap().to_owned();
    write(
        d,
        "own.qcow2",
        &craft(None, &[(EXT_DATA_FILE, name.as_bytes())]),
    );
    assert_eq!(
        backing_chain(&own),
        Err(ImageError::Loop { path: canon(&own) })
    );
}

#[test]
fn declared_formats_decide_how_far_the_walk_goes() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let deep = create(
        d,
        "qcow2",
        "deep.qcow2",
        &["-u", "-b", "nbd://127.0.0.1:1/x", "-F", "raw"],
    );
    // Declared raw: not looked into, even though it is qcow2.
    let top = create(
        d,
        "qcow2",
        "top.qcow2",
        &["-u", "-b", "deep.qcow2", "-F", "raw"],
    );
    assert_eq!(
        backing_chain(&top).unwrap(),
        [backing(&deep, Some("raw"), "deep.qcow2")]
    );
    // Declared qcow2 but raw: QEMU would not open it.
    create(d, "raw", "plain.raw", &[]);
    let top = create(
        d,
        "qcow2",
        "liar.qcow2",
        &["-u", "-b", "plain.raw", "-F", "qcow2"],
    );
    malformed(&top);
    // Declared as a format that can name other files.
    let vmdk = create(d, "vmdk", "base.vmdk", &[]);
    let top = create(
        d,
        "qcow2",
        "onvmdk.qcow2",
        &["-b", "base.vmdk", "-F", "vmdk"],
    );
    assert_eq!(
        backing_chain(&top),
        Err(ImageError::Unsupported {
            image: canon(&vmdk),
            format: "vmdk".into()
        })
    );
    // vdi and vpc name no other files in QEMU: the walk stops there.
    let vdi = create(d, "vdi", "base.vdi", &[]);
    let top = create(d, "qcow2", "onvdi.qcow2", &["-b", "base.vdi", "-F", "vdi"]);
    assert_eq!(
        backing_chain(&top).unwrap(),
        [backing(&vdi, Some("vdi"), "base.vdi")]
    );
}

#[test]
fn formats_are_probed_by_magic() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    for (format, want) in [
        ("qcow2", Some("qcow2")),
        ("qcow", Some("qcow")),
        ("qed", Some("qed")),
        ("vmdk", Some("vmdk")),
        ("vhdx", Some("vhdx")),
        ("vdi", Some("vdi")),
        ("vpc", Some("vpc")),
        ("raw", None),
    ] {
        let img = create(d, format, &format!("img.{format}"), &[]);
        assert_eq!(probe_format(&img).unwrap(), want, "{format}");
        let chain = backing_chain(&img);
        match format {
            "qcow2" | "vdi" | "vpc" | "raw" => assert_eq!(chain.unwrap(), [], "{format}"),
            _ => assert_eq!(
                chain,
                Err(ImageError::Unsupported {
                    image: canon(&img),
                    format: format.into()
                })
            ),
        }
    }
}

#[test]
fn an_undeclared_backing_format_is_probed() {
    let tmp = tempdir();
    let d = tmp.path();
    // A raw file holding a VMDK descriptor: QEMU would open the extent it names.
    let desc = write(
        d,
        "desc.raw",
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
          createType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n",
    );
    let top = write(d, "top.qcow2", &craft(Some(b"desc.raw"), &[]));
    assert_eq!(
        backing_chain(&top),
        Err(ImageError::Unsupported {
            image: canon(&desc),
            format: "vmdk".into()
        })
    );
    // Undeclared qcow2: walked (an empty format name counts as undeclared).
    let base = write(d, "base.raw", b"just bytes");
    let mid = write(
        d,
        "mid.qcow2",
        &craft(Some(b"base.raw"), &[(EXT_BACKING_FORMAT, b"")]),
    );
    let top = write(d, "top.qcow2", &craft(Some(b"mid.qcow2"), &[]));
    assert_eq!(
        backing_chain(&top).unwrap(),
        [
            backing(&mid, None, "mid.qcow2"),
            backing(&base, None, "base.raw")
        ]
    );
    // A qcow version 1 image names a backing file of its own.
    let mut v1 = vec![0u8; 512];
    v1[..4].copy_from_slice(QCOW_MAGIC);
    v1[4..8].copy_from_slice(&1u32.to_be_bytes());
    let v1 = write(d, "v1.img", &v1);
    let top = write(d, "top.qcow2", &craft(Some(b"v1.img"), &[]));
    assert_eq!(
        backing_chain(&top),
        Err(ImageError::Unsupported {
            image: canon(&v1),
            format: "qcow".into()
        })
    );
}

#[test]
fn a_fifo_is_not_waited_on() {
    let tmp = tempdir();
    let d = tmp.path();
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let top = write(d, "top.qcow2", &craft(Some(b"fifo"), &[]));
    assert!(matches!(
        backing_chain(&top),
        Err(ImageError::Io { path, .. }) if path == canon(&fifo)
    ));
    assert!(matches!(probe_format(&fifo), Err(ImageError::Io { .. })));
    // A directory is no image either.
    fs::create_dir(d.join("dir")).unwrap();
    let top = write(d, "top.qcow2", &craft(Some(b"dir"), &[]));
    assert!(matches!(backing_chain(&top), Err(ImageError::Io { .. })));
}

#[test]
fn malformed_headers_are_refused() {
    let tmp = tempdir();
    let d = tmp.path();
    write(d, "base.raw", b"x");
    let good = craft(Some(b"base.raw"), &[(EXT_BACKING_FORMAT, b"raw")]);
    let top = write(d, "good.qcow2", &good);
    assert_eq!(backing_chain(&top).unwrap().len(), 1);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated v2 header", good[..50].to_vec()));
    cases.push(("truncated v3 header", good[..90].to_vec()));
    let mut b = good.clone();
    b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    cases.push(("huge backing_file_size", b));
    let mut b = good.clone();
    b[16..20].copy_from_slice(&1024u32.to_be_bytes());
    cases.push(("backing_file_size 1024", b));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(good.len() as u64 + 100).to_be_bytes());
    cases.push(("backing offset past EOF", b));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    cases.push(("backing offset u64::MAX", b));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(1u64 << 16).to_be_bytes());
    cases.push(("backing name past the first cluster", b));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&4u32.to_be_bytes());
    cases.push(("version 4", b));
    let mut b = good.clone();
    b[20..24].copy_from_slice(&30u32.to_be_bytes());
    cases.push(("cluster_bits 30", b));
    let mut b = good.clone();
    b[100..104].copy_from_slice(&100u32.to_be_bytes());
    cases.push(("header_length 100", b));
    let mut b = good.clone();
    b[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
    cases.push(("header_length huge", b));
    let mut b = good.clone();
    b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
    cases.push(("extension length huge", b));
    cases.push((
        "backing format name too long",
        craft(
            Some(b"base.raw"),
            &[(EXT_BACKING_FORMAT, b"a-very-long-format")],
        ),
    ));
    cases.push((
        "two backing format extensions",
        craft(
            Some(b"base.raw"),
            &[(EXT_BACKING_FORMAT, b"raw"), (EXT_BACKING_FORMAT, b"qcow2")],
        ),
    ));
    cases.push(("NUL in the backing name", craft(Some(b"base.raw\0x"), &[])));
    cases.push(("non-UTF-8 backing name", craft(Some(b"base\xff.raw"), &[])));
    cases.push(("empty data file name", craft(None, &[(EXT_DATA_FILE, b"")])));
    let mut b = craft(None, &[]);
    b.truncate(104 + 4);
    cases.push(("extension header cut short", b));
    // Extensions running past the first 64 KiB of a bigger file.
    let mut b = craft(None, &[]);
    b.truncate(104);
    b[20..24].copy_from_slice(&20u32.to_be_bytes()); // 1 MiB clusters
    b.extend(vec![0xAB; 2 * HEAD_BYTES]);
    for chunk in b[104..].chunks_mut(16) {
        chunk[..8].copy_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 8]);
    }
    cases.push(("extensions past 64 KiB", b));

    for (what, bytes) in cases {
        let p = write(d, "bad.qcow2", &bytes);
        let why = malformed(&p);
        assert!(!why.is_empty(), "{what}");
    }

    // A header that ends right after the fixed part reads as no extensions,
    // as QEMU reads zeros there.
    let mut b = craft(None, &[]);
    b.truncate(104);
    let p = write(d, "short.qcow2", &b);
    assert_eq!(backing_chain(&p).unwrap(), []);
    // Offset set but an empty name: no backing file (as in QEMU).
    let mut b = craft(Some(b"base.raw"), &[]);
    b[16..20].copy_from_slice(&0u32.to_be_bytes());
    let p = write(d, "noname.qcow2", &b);
    assert_eq!(backing_chain(&p).unwrap(), []);
}

#[test]
fn a_version_2_header_is_read() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let base = create(d, "raw", "base.raw", &[]);
    let top = create(
        d,
        "qcow2",
        "v2.qcow2",
        &["-o", "compat=0.10", "-b", "base.raw", "-F", "raw"],
    );
    assert_eq!(
        backing_chain(&top).unwrap(),
        [backing(&base, Some("raw"), "base.raw")]
    );
}

/// xorshift64*: a seeded generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, in_n: u64) -> bool {
        self.below(in_n) == 0
    }
}

/// Random bytes after a valid magic, biased towards plausible fields so the
/// extension and name parsing is reached.
fn random_header(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(1200) as usize + 4;
    let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    b[..4].copy_from_slice(QCOW_MAGIC);
    fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
        if b.len() >= at + bytes.len() {
            b[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
    if !rng.chance(4) {
        put(&mut b, 4, &(2 + rng.below(2) as u32).to_be_bytes());
    }
    if !rng.chance(4) {
        put(&mut b, 20, &(9 + rng.below(13) as u32).to_be_bytes());
    }
    if !rng.chance(2) {
        put(&mut b, 100, &(104 + 8 * rng.below(3) as u32).to_be_bytes());
    }
    if rng.chance(2) {
        put(&mut b, 8, &rng.below(len as u64 + 64).to_be_bytes());
        put(&mut b, 16, &(rng.below(80) as u32).to_be_bytes());
    }
    let mut at = 104;
    while rng.chance(2) && at + 8 <= b.len() {
        let kind = [
            EXT_END,
            EXT_BACKING_FORMAT,
            EXT_DATA_FILE,
            rng.next() as u32,
        ][rng.below(4) as usize];
        let size = rng.below(40) as u32;
        put(&mut b, at, &kind.to_be_bytes());
        put(&mut b, at + 4, &size.to_be_bytes());
        at += 8 + size.next_multiple_of(8) as usize;
    }
    b
}

#[test]
fn random_headers_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    // In memory: the parser and the prober.
    for _ in 0..20_000 {
        let bytes = random_header(&mut rng);
        let whole = !rng.chance(4);
        let head = Head { bytes, whole };
        let _ = probe(&head.bytes);
        let _ = parse_qcow2("fuzz", &head);
    }
    // On disk: the whole walk, names resolved in a scratch directory.
    let tmp = tempdir();
    let d = tmp.path();
    write(d, "base.raw", b"x");
    for _ in 0..1_500 {
        let bytes = random_header(&mut rng);
        let p = write(d, "fuzz.qcow2", &bytes);
        let _ = backing_chain(&p);
    }
}

#[test]
fn mutated_real_headers_never_panic() {
    if !have_qemu_img() {
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    create(d, "raw", "base.raw", &[]);
    let data = d.join("data.raw");
    let opt = format!("data_file={}", data.display());
    let real = create(
        d,
        "qcow2",
        "real.qcow2",
        &["-o", &opt, "-b", "base.raw", "-F", "raw"],
    );
    let original = fs::read(&real).unwrap();
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let target = d.join("mutant.qcow2");
    for _ in 0..1_500 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(512) as usize;
            bytes[at] = rng.next() as u8;
        }
        if rng.chance(8) {
            bytes.truncate(rng.below(600) as usize);
        }
        fs::write(&target, &bytes).unwrap();
        let _ = backing_chain(&target);
    }
}
