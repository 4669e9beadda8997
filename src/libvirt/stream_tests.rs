//! Tests of `stream.rs`: waiting on and moving bytes through a caller's
//! descriptor.

use super::*;

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
