//! `ipipd install-cni`: what an init container does for a pod network, as Calico's and
//! flannel's do: the plugin binary copied where the kubelet's runtime looks for plugins
//! (`/opt/cni/bin`) and a conflist in its config directory (`/etc/cni/net.d`), each written
//! aside and renamed into place, and only when different (a second run changes nothing). No
//! other file is touched.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// The conflist's file name: libcni takes the first by name, and `10-` goes before the
/// `87-podman` and `99-loopback` a host may have.
pub const CONFLIST: &str = "10-ipipd.conflist";
/// The plugin's file name in the plugin directory.
pub const PLUGIN: &str = "ipipd-cni";

/// The conflist for a node whose daemon listens on `socket`: ipipd-cni (with the daemon's
/// IPAM), then the reference `portmap` chained, so that a pod's `hostPort` works.
pub fn conflist(socket: &Path, log_file: Option<&Path>) -> Value {
    let mut ipipd = json!({
        "type": PLUGIN,
        "socket": socket,
        "ipam": {"type": "ipipd"},
    });
    if let Some(l) = log_file {
        ipipd["log_file"] = json!(l);
    }
    json!({
        "cniVersion": "1.0.0",
        "name": "ipipd",
        "plugins": [
            ipipd,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// What a run did to each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Written(PathBuf),
    Unchanged(PathBuf),
}

/// Writes `data` to `path` with `mode`, unless the file there has these very bytes: written
/// aside in the same directory (a hidden name no runtime reads), then renamed over it.
pub fn put(path: &Path, data: &[u8], mode: u32) -> Result<Done> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        let perms = std::fs::metadata(path)?.permissions();
        if perms.mode() & 0o7777 == mode {
            return Ok(Done::Unchanged(path.to_path_buf()));
        }
    }
    let dir = path.parent().context("a path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a path without a name")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| Done::Written(path.to_path_buf()))
}

/// Removes the plugin from `bin_dir` and the conflist from `conf_dir` (uninstalling); the
/// files it removed.
pub fn remove(bin_dir: &Path, conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut gone = Vec::new();
    for p in [conf_dir.join(CONFLIST), bin_dir.join(PLUGIN)] {
        match std::fs::remove_file(&p) {
            Ok(()) => gone.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(gone)
}

/// Copies the plugin `binary` into `bin_dir` and writes `conflist` into `conf_dir`.
pub fn install(
    binary: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    conflist: &Value,
) -> Result<Vec<Done>> {
    let plugin = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut text = serde_json::to_vec_pretty(conflist)?;
    text.push(b'\n');
    Ok(vec![
        put(&bin_dir.join(PLUGIN), &plugin, 0o755)?,
        put(&conf_dir.join(CONFLIST), &text, 0o644)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_install_changes_nothing_and_other_files_stay() {
        let dir = std::env::temp_dir().join(format!("ipipd-install-{}", std::process::id()));
        let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("87-podman.conflist"), "{}").unwrap();
        let src = dir.join("ipipd-cni");
        std::fs::write(&src, b"\x7fELF plugin").unwrap();
        let list = conflist(Path::new("/var/lib/ipipd/n1/ipipd.sock"), None);
        let first = install(&src, &bin, &conf, &list).unwrap();
        assert!(
            first.iter().all(|d| matches!(d, Done::Written(_))),
            "{first:?}"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&bin.join(PLUGIN)), 0o755);
        assert_eq!(mode(&conf.join(CONFLIST)), 0o644);
        let second = install(&src, &bin, &conf, &list).unwrap();
        assert!(
            second.iter().all(|d| matches!(d, Done::Unchanged(_))),
            "{second:?}"
        );
        // A new plugin replaces the old one; the foreign conflist and nothing else is there.
        std::fs::write(&src, b"\x7fELF plugin v2").unwrap();
        let third = install(&src, &bin, &conf, &list).unwrap();
        assert!(matches!(third[0], Done::Written(_)) && matches!(third[1], Done::Unchanged(_)));
        let mut names: Vec<String> = std::fs::read_dir(&conf)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["10-ipipd.conflist", "87-podman.conflist"]);
        assert_eq!(
            std::fs::read(conf.join("87-podman.conflist")).unwrap(),
            b"{}"
        );
        let written: Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(
            written["plugins"][0]["socket"],
            "/var/lib/ipipd/n1/ipipd.sock"
        );
        assert_eq!(written["plugins"][1]["type"], "portmap");
        // Removing takes ours only, once.
        assert_eq!(remove(&bin, &conf).unwrap().len(), 2);
        assert!(remove(&bin, &conf).unwrap().is_empty());
        assert!(conf.join("87-podman.conflist").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
