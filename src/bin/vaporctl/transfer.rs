//! `volume upload`, `iso upload`, `volume download`: vaporctl opens the
//! local file itself (as the user running it) and hands vapord only the
//! descriptor; vapord never opens a caller's path.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;

use serde_json::json;
use zbus::Fd;

use crate::bus::Client;
use crate::job::with_progress;
use crate::volume::{created, named, VolArg};
use crate::Failure;

/// What `volume upload` and `iso upload` send.
pub struct Upload<'a> {
    pub pool: &'a str,
    pub file: &'a str,
    pub name: Option<&'a str>,
    pub format: Option<&'a str>,
    pub size: Option<u64>,
}

/// The volume name an upload gets: `--name`, else the file's name.
pub fn upload_name(file: &str, name: Option<&str>) -> Result<String, Failure> {
    if let Some(n) = name {
        return Ok(n.to_owned());
    }
    let base = std::path::Path::new(file)
        .file_name()
        .filter(|_| file != "-")
        .and_then(|b| b.to_str());
    base.map(str::to_owned)
        .ok_or_else(|| Failure::new(2, format!("give the volume a name with --name ({file})")))
}

/// Open FILE (or stdin) as the user, and hand vapord the descriptor.
pub async fn upload(c: &Client, up: &Upload<'_>, json_out: bool) -> Result<(), Failure> {
    let name = upload_name(up.file, up.name)?;
    let unreadable = |e: std::io::Error| Failure::new(66, format!("cannot read {}: {e}", up.file));
    let file = if up.file == "-" {
        File::from(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(unreadable)?,
        )
    } else {
        File::open(up.file).map_err(unreadable)?
    };
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(Failure::new(
            66,
            format!("cannot read {}: it is a directory", up.file),
        ));
    }
    if !meta.is_file() && up.size.is_none() {
        return Err(Failure::new(
            2,
            format!(
                "{} is not a regular file: give its length with --size",
                up.file
            ),
        ));
    }
    let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    if let Some(f) = up.format {
        opts.insert("format", f.into());
    }
    if let Some(s) = up.size {
        opts.insert("size", s.into());
    }
    let p = c.pool(up.pool).await?;
    let path = with_progress(&c.conn, p.upload_volume(&name, Fd::from(&file), opts)).await?;
    created(path.as_str(), json_out);
    Ok(())
}

pub async fn download(c: &Client, vol: &VolArg, file: &str, json_out: bool) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let (path, shown, _) = named(c, vol).await?;
    let v = c.volume_at(&path).await?;
    if file == "-" {
        if std::io::stdout().is_terminal() {
            return Err(Failure::new(
                2,
                "refusing to write volume data to a terminal",
            ));
        }
        let out = std::io::stdout();
        return with_progress(&c.conn, v.download(Fd::from(&out), HashMap::new())).await;
    }
    let existed = std::path::Path::new(file).exists();
    let out =
        File::create(file).map_err(|e| Failure::new(73, format!("cannot create {file}: {e}")))?;
    let result = with_progress(&c.conn, v.download(Fd::from(&out), HashMap::new())).await;
    if result.is_err() && !existed {
        let _ = std::fs::remove_file(file);
    }
    result?;
    if json_out {
        println!("{}", json!({"volume": shown, "downloaded": file}));
    } else {
        println!("{shown}: downloaded to {file}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_named_after_the_file() {
        assert_eq!(
            upload_name("/tmp/x/debian.iso", None).ok(),
            Some("debian.iso".into())
        );
        assert_eq!(
            upload_name("debian.iso", Some("d12")).ok(),
            Some("d12".into())
        );
        assert_eq!(upload_name("-", None).map_err(|f| f.code).err(), Some(2));
        assert_eq!(upload_name("-", Some("s")).ok(), Some("s".into()));
    }
}
