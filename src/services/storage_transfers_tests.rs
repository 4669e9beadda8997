//! Tests of `storage_transfers.rs`: the transfer limits and the cancel
//! bridge.

use super::*;

#[test]
fn transfers_are_capped_per_caller_and_in_all() {
    let t = Transfers::new(2, 3);
    let a1 = t.take(1000).unwrap();
    let _a2 = t.take(1000).unwrap();
    let e = t.take(1000).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)));
    assert!(e.to_string().contains("at most 2") && e.to_string().contains("per caller"));
    let _b1 = t.take(1001).unwrap();
    let e = t.take(1002).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)));
    assert!(e.to_string().contains("at most 3"), "{e}");
    assert_eq!(t.count(1000), (2, 3));
    // A finished transfer gives its slot back.
    drop(a1);
    assert_eq!(t.count(1000), (1, 2));
    let _c1 = t.take(1002).unwrap();
    assert_eq!(t.count(1002), (1, 3));
}

#[test]
fn the_daemon_caps_transfers_at_four_per_caller_and_sixteen_in_all() {
    let t = Transfers::new(MAX_TRANSFERS_PER_CALLER, MAX_TRANSFERS);
    let mut held: Vec<_> = (0..4).map(|_| t.take(7).unwrap()).collect();
    assert!(t.take(7).unwrap_err().to_string().contains("at most 4"));
    for uid in 100..103 {
        held.extend((0..4).map(|_| t.take(uid).unwrap()));
    }
    assert!(t.take(200).unwrap_err().to_string().contains("at most 16"));
    held.clear();
    assert_eq!(t.count(7), (0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_transfer_learns_of_a_cancel_while_nothing_moves() {
    use crate::progress::CancelFlag;
    use std::time::Duration;
    struct Job(CancelFlag);
    impl Progress for Job {
        fn update(&self, _: &str, _: u64, _: u64) {}
        fn cancelled(&self) -> bool {
            self.0.is_set()
        }
    }
    let job = Arc::new(Job(CancelFlag::default()));
    let flag = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(10);
    let watcher = tokio::spawn(follow_cancel(job.clone(), Arc::downgrade(&flag), every));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!flag.load(Ordering::SeqCst));
    job.0.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
    assert!(flag.load(Ordering::SeqCst));
    // And it stops watching once the transfer let go of the flag.
    let gone = Arc::new(AtomicBool::new(false));
    let never = Arc::new(Job(CancelFlag::default()));
    let watcher = tokio::spawn(follow_cancel(never, Arc::downgrade(&gone), every));
    drop(gone);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn other_work_is_named_in_refusals_and_each_caller_has_a_share() {
    let t = Transfers::of("guest programs", 1, 2);
    let _a = t.take(5).unwrap();
    let e = t.take(5).unwrap_err().to_string();
    assert!(
        e.contains("at most 1 guest programs may run at once per caller"),
        "{e}"
    );
    let _b = t.take(6).unwrap();
    let e = t.take(7).unwrap_err().to_string();
    assert!(
        e.contains("at most 2 guest programs may run at once;"),
        "{e}"
    );
}
