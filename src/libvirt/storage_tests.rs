//! Tests of `storage.rs`: volume creation flags and listing rules.

use super::*;

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
