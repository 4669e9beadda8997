//! Reading disk image headers to learn what an image makes QEMU open: the
//! backing files and external data files below it, recursively.
//!
//! This module owns the qcow2 header parser (versions 2 and 3), cheap format
//! probing by magic number (as QEMU probes a backing file whose format the
//! header does not name), and the walk down a chain with QEMU's rules for
//! resolving the names an image carries.
//!
//! It must never open anything but local files: a name with a protocol
//! (`nbd:`, `nbd+unix://`, `http://`, `ssh://`, `json:{…}` …) is refused before
//! anything is opened, so reading a chain never makes a network connection.
//! It must never run `qemu-img` (or any program), which follows such names.
//! Every read is bounded: at most the first 64 KiB of a file, nothing
//! allocated from a header field that is not checked against that bound first,
//! and a chain at most [`MAX_DEPTH`] backing files deep.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most backing files below an image that [`backing_chain`] follows.
pub const MAX_DEPTH: usize = 16;

/// How much of a file is ever read.
const HEAD_BYTES: usize = 64 * 1024;
/// How much QEMU looks at when it probes a format (`BLOCK_PROBE_BUF_SIZE`).
const PROBE_BYTES: usize = 2048;

const QCOW_MAGIC: &[u8; 4] = b"QFI\xfb";
/// The fixed part of a version 2 header; version 3 adds fields up to byte 104.
const QCOW2_V2_HEADER: usize = 72;
const QCOW2_V3_HEADER: usize = 104;
const EXT_END: u32 = 0x0000_0000;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// QEMU refuses a longer backing file name.
const MAX_BACKING_NAME: u64 = 1023;
/// QEMU refuses a backing format name of 16 bytes or more.
const MAX_FORMAT_NAME: usize = 15;

/// Why a file is below an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// The image's backing file (reads fall through to it).
    Backing,
    /// The image's external data file (its guest data lives there).
    DataFile,
}

/// One file an image makes QEMU open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// Absolute, symlinks resolved; for a file that does not exist, the
    /// absolute path QEMU would look for (and the walk stopped there).
    pub path: String,
    /// The format the naming image declares for it (backing files only);
    /// `None` when the header declares none.
    pub format: Option<String>,
    pub role: LinkRole,
    /// The name as written in the naming image's header.
    pub named_as: String,
}

/// Why a chain cannot be read (or must not be followed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A name that is not a local file path (a protocol, `json:` …). Refused
    /// without opening anything.
    #[error("{image} refers to '{}', which is not a local file; vapord follows only local files in a backing chain and did not open it", printable(.name))]
    NotLocal { image: String, name: String },
    /// A relative external data file name: QEMU resolves it against its own
    /// working directory, not the image's, so which file it names is unknown.
    #[error("{image} names its external data file by the relative name '{}', which QEMU resolves against its own working directory; vapord accepts only an absolute data file name", printable(.name))]
    RelativeDataFile { image: String, name: String },
    /// A file appears twice in the chain.
    #[error("the backing chain loops: {path} appears in it twice")]
    Loop { path: String },
    /// More than `limit` backing files below `image`.
    #[error("the backing chain below {image} is deeper than {limit} images")]
    TooDeep { image: String, limit: usize },
    /// A format whose other files vapord cannot read.
    #[error("{image} is a {fmt} image; vapord follows only qcow2 and raw images and cannot tell which files a {fmt} image makes QEMU open", fmt = printable(.format))]
    Unsupported { image: String, format: String },
    /// A header QEMU would refuse, or one vapord cannot read within its bounds.
    #[error("{image} has a malformed image header: {why}")]
    Malformed { image: String, why: String },
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {why}")]
    Io { path: String, why: String },
}

/// The format of the image at `path`, by its magic number, as QEMU would
/// probe it: `"qcow2"`, `"qcow"` (version 1), `"qed"`, `"vmdk"`, `"vhdx"`,
/// `"vdi"` or `"vpc"`; `None` for raw (or anything else).
pub fn probe_format(path: &Path) -> Result<Option<&'static str>, ImageError> {
    match read_head(path)? {
        Some(head) => Ok(probe(&head.bytes)),
        None => Err(ImageError::Io {
            path: show(path),
            why: "no such file".to_owned(),
        }),
    }
}

/// The paths of [`backing_chain`] (backing files and external data files,
/// symlinks resolved); empty when the image does not exist. A chain that
/// names a non-local file, loops, is too deep or cannot be read is an error
/// (nothing is opened over the network).
pub fn backing_chain_paths(path: &str) -> Result<Vec<String>, String> {
    backing_chain(Path::new(path))
        .map(|links| links.into_iter().map(|l| l.path).collect())
        .map_err(|e| e.to_string())
}

/// Every file below the image at `path` that QEMU would open: backing files
/// and external data files, recursively, top first (`path` itself is not
/// listed). Empty for a raw image and for a `path` that does not exist.
///
/// Relative backing names resolve against the directory of the image that
/// names them, as QEMU does (the directory of the path as given, before
/// symlinks are resolved). The walk stops at a raw file, at a file that does
/// not exist, and at an image with no backing file. An external data file
/// must be named by an absolute path: QEMU resolves a relative one against
/// its own working directory, so what it names is unknown here.
pub fn backing_chain(path: &Path) -> Result<Vec<ChainLink>, ImageError> {
    let top_real = match resolve(path)? {
        Resolved::Exists(p) => p,
        Resolved::Missing(_) => return Ok(Vec::new()),
    };
    let Some(mut head) = read_head(&top_real)? else {
        return Ok(Vec::new()); // removed meanwhile
    };
    match follow(probe(&head.bytes)) {
        Follow::Walk => {}
        Follow::Stop => return Ok(Vec::new()),
        Follow::Refuse(format) => {
            return Err(ImageError::Unsupported {
                image: show(&top_real),
                format,
            })
        }
    }

    let mut links = Vec::new();
    let mut seen = HashSet::from([top_real.clone()]);
    let mut depth = 0;
    // The current image: as QEMU names it (for relative names) and as it is.
    let mut as_named = path.to_path_buf();
    let mut real = top_real;
    loop {
        let image = show(&real);
        let names = parse_qcow2(&image, &head)?;

        if let Some(name) = names.data_file {
            let local = local_path(&image, &name)?;
            if local.is_relative() {
                return Err(ImageError::RelativeDataFile { image, name });
            }
            let path = match resolve(&local)? {
                Resolved::Exists(p) => {
                    if !seen.insert(p.clone()) {
                        return Err(ImageError::Loop { path: show(&p) });
                    }
                    p
                }
                Resolved::Missing(p) => p,
            };
            links.push(ChainLink {
                path: utf8(&image, &path)?,
                format: None,
                role: LinkRole::DataFile,
                named_as: name,
            });
        }

        let Some(name) = names.backing else {
            break;
        };
        let local = local_path(&image, &name)?;
        let next_named = if local.is_absolute() {
            local
        } else {
            as_named
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(local)
        };
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(ImageError::TooDeep {
                image: show(path),
                limit: MAX_DEPTH,
            });
        }
        let next_real = match resolve(&next_named)? {
            Resolved::Exists(p) => p,
            Resolved::Missing(p) => {
                links.push(ChainLink {
                    path: utf8(&image, &p)?,
                    format: names.backing_format,
                    role: LinkRole::Backing,
                    named_as: name,
                });
                break;
            }
        };
        if !seen.insert(next_real.clone()) {
            return Err(ImageError::Loop {
                path: show(&next_real),
            });
        }
        links.push(ChainLink {
            path: utf8(&image, &next_real)?,
            format: names.backing_format.clone(),
            role: LinkRole::Backing,
            named_as: name,
        });

        let Some(next_head) = read_head(&next_real)? else {
            break; // removed meanwhile
        };
        let probed = probe(&next_head.bytes);
        let how = match names.backing_format.as_deref() {
            // A declared format is used as is: QEMU does not probe.
            Some(declared) => {
                let how = follow(Some(declared));
                if matches!(how, Follow::Walk) && probed != Some("qcow2") {
                    return Err(ImageError::Malformed {
                        image: show(&next_real),
                        why: format!("{image} declares it qcow2, but it is not a qcow2 image"),
                    });
                }
                how
            }
            None => follow(probed),
        };
        match how {
            Follow::Walk => {}
            Follow::Stop => break,
            Follow::Refuse(format) => {
                return Err(ImageError::Unsupported {
                    image: show(&next_real),
                    format,
                })
            }
        }
        head = next_head;
        as_named = next_named;
        real = next_real;
    }
    Ok(links)
}

/// What to do with a file of a format (`None`: raw or unrecognised).
enum Follow {
    /// qcow2: read its header and go on.
    Walk,
    /// A format whose QEMU driver opens no other file: the chain ends here.
    Stop,
    /// Anything else: vapord cannot tell what it opens.
    Refuse(String),
}

fn follow(format: Option<&str>) -> Follow {
    match format {
        Some("qcow2") => Follow::Walk,
        // QEMU's vdi and vpc drivers support no backing file.
        None | Some("raw") | Some("vdi") | Some("vpc") => Follow::Stop,
        Some(other) => Follow::Refuse(other.to_owned()),
    }
}

/// The first bytes of a file, and whether they are the whole file.
struct Head {
    bytes: Vec<u8>,
    whole: bool,
}

/// Reads at most [`HEAD_BYTES`] of a regular file or block device; `None`
/// when it does not exist.
fn read_head(path: &Path) -> Result<Option<Head>, ImageError> {
    let io_err = |e: io::Error| ImageError::Io {
        path: show(path),
        why: e.to_string(),
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let kind = file.metadata().map_err(io_err)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ImageError::Io {
            path: show(path),
            why: "not a regular file or block device".to_owned(),
        });
    }
    let mut bytes = Vec::with_capacity(HEAD_BYTES + 1);
    Read::take(file, HEAD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let whole = bytes.len() <= HEAD_BYTES;
    bytes.truncate(HEAD_BYTES);
    Ok(Some(Head { bytes, whole }))
}

/// The format QEMU would probe from a file's first bytes (see the
/// `*_probe` functions of QEMU's block drivers).
fn probe(head: &[u8]) -> Option<&'static str> {
    let buf = &head[..head.len().min(PROBE_BYTES)];
    if buf.len() >= 8 && buf.starts_with(QCOW_MAGIC) {
        return Some(if be32(buf, 4) >= 2 { "qcow2" } else { "qcow" });
    }
    if buf.len() >= 68 && buf.starts_with(b"QED\0") {
        return Some("qed");
    }
    if buf.starts_with(b"KDMV") || buf.starts_with(b"COWD") || vmdk_descriptor(buf) {
        return Some("vmdk");
    }
    if buf.starts_with(b"vhdxfile") {
        return Some("vhdx");
    }
    if buf.len() >= 512 && buf[64..68] == 0xbeda_107f_u32.to_le_bytes() {
        return Some("vdi");
    }
    if buf.starts_with(b"conectix") {
        return Some("vpc");
    }
    None
}

/// Whether `buf` starts like a VMDK text descriptor: comment and blank lines,
/// then a `version=` line. (QEMU's probe is a little stricter; erring this
/// way only refuses more.) A raw file with such text makes QEMU open the
/// extents it lists.
fn vmdk_descriptor(buf: &[u8]) -> bool {
    for line in buf.split(|&b| b == b'\n') {
        if line.starts_with(b"#") || line.iter().all(|&b| b == b' ' || b == b'\r') {
            continue;
        }
        return line.starts_with(b"version=");
    }
    false
}

/// What a qcow2 header names.
#[derive(Debug, Default)]
struct Qcow2Names {
    backing: Option<String>,
    backing_format: Option<String>,
    data_file: Option<String>,
}

/// Parses the names in a qcow2 header (v2 or v3), with QEMU's checks.
fn parse_qcow2(image: &str, head: &Head) -> Result<Qcow2Names, ImageError> {
    let buf = &head.bytes;
    let bad = |why: String| ImageError::Malformed {
        image: image.to_owned(),
        why,
    };
    // Where a needed range lies outside what was read.
    let outside = |end: u64| {
        if head.whole {
            format!("it points {end} bytes into a file of {} bytes", buf.len())
        } else {
            format!("it points beyond the first {HEAD_BYTES} bytes, which is all vapord reads")
        }
    };
    if !buf.starts_with(QCOW_MAGIC) {
        return Err(bad("it is not a qcow2 image".to_owned()));
    }
    if buf.len() < QCOW2_V2_HEADER {
        return Err(bad(format!(
            "the file ends inside the qcow2 header ({} bytes)",
            buf.len()
        )));
    }
    let version = be32(buf, 4);
    if !(2..=3).contains(&version) {
        return Err(bad(format!("qcow2 version {version} is not 2 or 3")));
    }
    let backing_offset = be64(buf, 8);
    let backing_size = u64::from(be32(buf, 16));
    let cluster_bits = be32(buf, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!(
            "cluster_bits {cluster_bits} is outside 9..=21"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let header_length = if version == 2 {
        QCOW2_V2_HEADER as u64
    } else {
        if buf.len() < QCOW2_V3_HEADER {
            return Err(bad(format!(
                "the file ends inside the qcow2 version 3 header ({} bytes)",
                buf.len()
            )));
        }
        let len = u64::from(be32(buf, 100));
        if len < QCOW2_V3_HEADER as u64 {
            return Err(bad(format!("header_length {len} is below 104")));
        }
        len
    };
    if header_length > cluster_size {
        return Err(bad(format!(
            "header_length {header_length} exceeds the cluster size {cluster_size}"
        )));
    }

    let mut names = Qcow2Names::default();
    // Header extensions: from the end of the header up to the backing file
    // name (or the end of the first cluster). Every offset below stays
    // within `buf.len() + 8` before it is compared, so nothing overflows.
    let ext_end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster_size
    };
    let len = buf.len() as u64;
    let mut off = header_length;
    while off < ext_end {
        if off >= len && head.whole {
            break; // QEMU reads zeros past the end of the file: the end marker
        }
        if off + 8 > len {
            return Err(bad(format!(
                "a header extension at byte {off} cannot be read: {}",
                outside(off + 8)
            )));
        }
        let kind = be32(buf, off as usize);
        let size = u64::from(be32(buf, off as usize + 4));
        off += 8;
        if off > ext_end || size > ext_end - off {
            return Err(bad(format!(
                "header extension {kind:#010x} is longer ({size} bytes) than the space for extensions"
            )));
        }
        if kind == EXT_END {
            break;
        }
        if off + size > len {
            return Err(bad(format!(
                "header extension {kind:#010x} cannot be read: {}",
                outside(off + size)
            )));
        }
        let data = &buf[off as usize..(off + size) as usize];
        match kind {
            EXT_BACKING_FORMAT => {
                if data.len() > MAX_FORMAT_NAME {
                    return Err(bad(format!(
                        "the backing format name is {} bytes long (at most {MAX_FORMAT_NAME})",
                        data.len()
                    )));
                }
                if names.backing_format.is_some() {
                    return Err(bad("it has two backing format extensions".to_owned()));
                }
                let format = text(data, "the backing format name").map_err(&bad)?;
                // QEMU treats an empty format name as none (and probes).
                names.backing_format = Some(format).filter(|f| !f.is_empty());
            }
            EXT_DATA_FILE => {
                if names.data_file.is_some() {
                    return Err(bad("it has two data file extensions".to_owned()));
                }
                let name = text(data, "the data file name").map_err(&bad)?;
                if name.is_empty() {
                    return Err(bad("the data file name is empty".to_owned()));
                }
                names.data_file = Some(name);
            }
            _ => {} // other extensions name no files
        }
        off += (size + 7) & !7;
    }

    // QEMU: offset 0 means no backing file, and so does an empty name.
    if backing_offset != 0 && backing_size != 0 {
        if backing_size > MAX_BACKING_NAME {
            return Err(bad(format!(
                "the backing file name is {backing_size} bytes long (at most {MAX_BACKING_NAME})"
            )));
        }
        let end = backing_offset
            .checked_add(backing_size)
            .filter(|&end| end <= cluster_size)
            .ok_or_else(|| {
                bad(format!(
                    "the backing file name at byte {backing_offset} runs past the first cluster"
                ))
            })?;
        if end > len {
            return Err(bad(format!(
                "the backing file name cannot be read: {}",
                outside(end)
            )));
        }
        let name = &buf[backing_offset as usize..end as usize];
        names.backing = Some(text(name, "the backing file name").map_err(&bad)?);
    }
    Ok(names)
}

/// A name from a header as UTF-8 text without NUL bytes (QEMU would cut the
/// name at a NUL; vapord refuses it instead).
fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    if bytes.contains(&0) {
        return Err(format!("{what} contains a NUL byte"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// The local file path a name in `image` means, or `NotLocal`.
///
/// As QEMU decides: a `:` before the first `/` is a protocol prefix. Only
/// `file:` names a local file; the rest after it must itself have no protocol,
/// and must be absolute (QEMU resolves a `file:` name against its own working
/// directory, not the image's).
fn local_path(image: &str, name: &str) -> Result<PathBuf, ImageError> {
    let not_local = || ImageError::NotLocal {
        image: image.to_owned(),
        name: name.to_owned(),
    };
    let has_protocol = |s: &str| s.find([':', '/']).is_some_and(|i| s.as_bytes()[i] == b':');
    let path = match name.strip_prefix("file:") {
        Some(rest) if rest.starts_with('/') && !has_protocol(rest) => rest,
        Some(_) => return Err(not_local()),
        None if has_protocol(name) => return Err(not_local()),
        None => name,
    };
    Ok(PathBuf::from(path))
}

enum Resolved {
    /// Symlinks resolved.
    Exists(PathBuf),
    /// Absolute, as named.
    Missing(PathBuf),
}

fn resolve(path: &Path) -> Result<Resolved, ImageError> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(Resolved::Exists(p)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            std::path::absolute(path)
                .map(Resolved::Missing)
                .map_err(|e| ImageError::Io {
                    path: show(path),
                    why: e.to_string(),
                })
        }
        Err(e) => Err(ImageError::Io {
            path: show(path),
            why: e.to_string(),
        }),
    }
}

fn utf8(image: &str, path: &Path) -> Result<String, ImageError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ImageError::Malformed {
            image: image.to_owned(),
            why: format!("it names {}, a path that is not UTF-8", path.display()),
        })
}

/// `s` with control characters escaped, for messages (names come from
/// headers anyone may have written).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
