use super::*;

fn rec(id: &str, at: i64, parent: Option<&str>) -> BackupRecord {
    BackupRecord {
        manifest: Manifest {
            format: FORMAT,
            id: id.into(),
            vm_uuid: "u".into(),
            vm_name: "web".into(),
            created_at: at,
            kind: if parent.is_some() {
                "incremental"
            } else {
                "full"
            }
            .into(),
            parent: parent.map(Into::into),
            checkpoint: Some(format!("vapor-{id}")),
            disks: vec![DiskEntry {
                target: "vda".into(),
                file: "vda.qcow2".into(),
                virtual_size: 1 << 30,
            }],
            files: vec![FileEntry {
                name: "vda.qcow2".into(),
                bytes: 10,
                sha256: "00".into(),
            }],
        },
        verified: None,
    }
}

#[test]
fn a_chain_restores_from_its_full_backup_up() {
    let all = vec![
        rec("f", 1, None),
        rec("i1", 2, Some("f")),
        rec("i2", 3, Some("i1")),
    ];
    let c: Vec<&str> = chain("i2", &all).unwrap().iter().map(|r| r.id()).collect();
    assert_eq!(c, vec!["f", "i1", "i2"]);
    let broken = vec![rec("i1", 2, Some("f"))];
    assert!(chain("i1", &broken)
        .unwrap_err()
        .to_string()
        .contains("backup f of the chain is missing"));
    let looped = vec![rec("a", 1, Some("b")), rec("b", 2, Some("a"))];
    assert!(chain("a", &looped)
        .unwrap_err()
        .to_string()
        .contains("loops"));
    assert_eq!(
        descendants("f", &all),
        vec!["i1".to_owned(), "i2".to_owned()]
    );
    assert!(descendants("i2", &all).is_empty());
}

#[test]
fn retention_drops_whole_old_chains_and_never_the_newest() {
    let all = vec![
        rec("f1", 1, None),
        rec("i1", 2, Some("f1")),
        rec("f2", 3, None),
        rec("i2", 4, Some("f2")),
        rec("f3", 5, None),
    ];
    assert_eq!(retention(&all, 3), vec!["f1".to_owned(), "i1".to_owned()]);
    assert_eq!(retention(&all, 1), vec!["f1", "i1", "f2", "i2"]);
    assert!(retention(&all, 5).is_empty());
    // Dropping f1's chain would leave fewer than 4.
    assert!(retention(&all, 4).is_empty());
    // A single chain is never cut.
    let one = vec![rec("f", 1, None), rec("i", 2, Some("f"))];
    assert!(retention(&one, 1).is_empty());
}

#[test]
fn ids_and_file_names_stay_inside_the_repository() {
    let id = new_id(1796024217);
    assert!(id.starts_with("20261130_073657_"), "{id}");
    assert!(valid_id(&id));
    for bad in ["", "../x", "a/b", ".partial-x", "a-b"] {
        assert!(!valid_id(bad), "{bad}");
    }
    assert!(plain_file_name("vda.qcow2"));
    for bad in ["", "../etc/passwd", "a/b", ".hidden", "x\n"] {
        assert!(!plain_file_name(bad), "{bad:?}");
    }
}

#[test]
fn only_complete_backups_are_listed_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path(), false).unwrap();
    let part = repo.start("b1").unwrap();
    write_file(&part, "vda.qcow2", b"disk bytes").unwrap();
    assert!(repo.list().is_empty(), "a partial backup is not listed");
    let mut m = rec("b1", 1, None).manifest;
    m.files = vec![file_entry(&part, "vda.qcow2").unwrap()];
    repo.finish(&part, &m).unwrap();
    let listed = repo.list();
    assert_eq!(listed.len(), 1);
    assert!(repo.verify(&listed[0]).is_empty());
    // Watched: told every byte read, and stopped when told to.
    let mut read = 0;
    let problems = repo.verify_watched(&listed[0], &mut |k| {
        read += k;
        true
    });
    assert_eq!((problems, read), (Some(vec![]), 10));
    assert_eq!(repo.verify_watched(&listed[0], &mut |_| false), None);
    std::fs::write(repo.dir("b1").join("vda.qcow2"), b"disk bytez").unwrap();
    assert_eq!(
        repo.verify(&listed[0]),
        vec!["vda.qcow2: checksum differs from the manifest"]
    );
    repo.set_verified("b1", false, 5).unwrap();
    assert_eq!(repo.read("b1").unwrap().verified, Some(false));
    // A partial directory is known by its id, and goes when discarded.
    let b2 = repo.start("b2").unwrap();
    assert_eq!(repo.partial_ids(), vec!["b2".to_owned()]);
    repo.discard(&b2);
    assert!(repo.partial_ids().is_empty());
    // A manifest naming a file outside its directory is refused.
    let part = repo.start("b3").unwrap();
    let mut m = rec("b3", 2, None).manifest;
    m.files[0].name = "../b1/vda.qcow2".into();
    repo.finish(&part, &m).unwrap();
    assert!(repo
        .read("b3")
        .unwrap_err()
        .to_string()
        .contains("lists the file"));
    assert_eq!(repo.list().len(), 1);
}

#[test]
fn a_strict_repository_must_be_a_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    assert!(
        Repository::open(&real, true).is_ok(),
        "created when missing"
    );
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = Repository::open(&link, true).unwrap_err().to_string();
    assert!(err.contains("not a directory of vapord's own"), "{err}");
    assert!(
        Repository::open(&link, false).is_ok(),
        "an admin's link is followed"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"a volume").unwrap();
    assert!(Repository::open(&file, true).is_err());
}
