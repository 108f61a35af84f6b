//! A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

enum Entry {
    Dir,
    /// Contents read from a host file when the archive is written.
    HostFile {
        src: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
}

/// Entries keyed by their path inside the archive (no leading slash); parents are added as
/// directories, and a BTreeMap writes every directory before what it holds.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn key(path: &str) -> Result<String> {
    let k = path.trim_start_matches('/').trim_end_matches('/');
    if k.is_empty() || k.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("bad initramfs path {path:?}");
    }
    Ok(k.to_string())
}

impl Archive {
    fn parents(&mut self, k: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = k[at..].find('/') {
            let dir = &k[..at + i];
            let e = self.entries.entry(dir.to_string()).or_insert(Entry::Dir);
            if !matches!(e, Entry::Dir) {
                // The kernel's unpacker does not create files through a symlink.
                bail!("initramfs path {k:?}: {dir:?} is not a directory");
            }
            at += i + 1;
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, e: Entry) -> Result<()> {
        let k = key(path)?;
        self.parents(&k)?;
        self.entries.insert(k, e);
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.insert(path, Entry::Dir)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Entry::Symlink(target.to_string()))
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        self.insert(
            path,
            Entry::Bytes {
                data: data.into(),
                mode,
            },
        )
    }

    /// A host file (symlinks followed), keeping its permission bits.
    pub fn host_file(&mut self, path: &str, src: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", src.display());
        }
        self.insert(
            path,
            Entry::HostFile {
                src: src.to_path_buf(),
                mode: meta.permissions().mode() & 0o7777,
            },
        )
    }

    /// Every file under a host directory, at `path`.
    pub fn host_tree(&mut self, path: &str, src: &Path) -> Result<()> {
        for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let inner = format!("{}/{name}", path.trim_end_matches('/'));
            if e.file_type()?.is_dir() {
                self.host_tree(&inner, &e.path())?;
            } else {
                self.host_file(&inner, &e.path())?;
            }
        }
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        key(path).is_ok_and(|k| self.entries.contains_key(&k))
    }

    pub fn write(&self, out: &Path) -> Result<u64> {
        let f =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut written = 0u64;
        for (ino, (name, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data): (u32, Vec<u8>) = match e {
                Entry::Dir => (0o040755, Vec::new()),
                Entry::Symlink(t) => (0o120777, t.clone().into_bytes()),
                Entry::Bytes { data, mode } => (0o100000 | mode, data.clone()),
                Entry::HostFile { src, mode } => (
                    0o100000 | mode,
                    std::fs::read(src).with_context(|| format!("reading {}", src.display()))?,
                ),
            };
            written += record(&mut w, ino, name, mode, &data)?;
        }
        written += record(&mut w, 0, "TRAILER!!!", 0, &[])?;
        w.flush()?;
        Ok(written)
    }
}

fn pad4(w: &mut impl Write, len: u64) -> Result<u64> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad as usize])?;
    Ok(pad)
}

fn record(w: &mut impl Write, ino: u32, name: &str, mode: u32, data: &[u8]) -> Result<u64> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        u32::try_from(data.len()).context("initramfs file over 4 GiB")?,
        0,
        0,
        0,
        0,
        u32::try_from(name.len() + 1)?,
        0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let mut n = 110 + name.len() as u64 + 1;
    n += pad4(w, n)?;
    w.write_all(data)?;
    n += data.len() as u64;
    n += pad4(w, data.len() as u64)?;
    Ok(n)
}
