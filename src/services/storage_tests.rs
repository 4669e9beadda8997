//! Tests of `storage.rs`: blocking work off the async workers.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "current_thread")]
async fn blocking_work_runs_in_place_on_a_current_thread_runtime() {
    assert_eq!(off_worker(|| 7), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn blocking_work_frees_the_worker_on_the_multi_thread_runtime() {
    use std::time::{Duration, Instant};
    let flag = Arc::new(AtomicBool::new(false));
    // The one worker blocks until another task ran: only possible if
    // the blocking work gave the worker up.
    let blocked = {
        let flag = flag.clone();
        tokio::spawn(async move {
            off_worker(|| {
                let start = Instant::now();
                while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                flag.load(Ordering::SeqCst)
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let setter = {
        let flag = flag.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) })
    };
    setter.await.unwrap();
    assert!(blocked.await.unwrap());
}

#[test]
fn blocking_work_runs_outside_a_runtime() {
    assert_eq!(off_worker(|| 7), 7);
}
