//! containerd's own stock config (`containerd config default` of each version), made runnable
//! in a test's temp dir: only paths, sockets, the sandbox image, the test registry and what
//! this machine cannot do are changed, in place with `toml_edit`, so everything else (plugin
//! names, defaults, and whatever `chunksnap containerd-config` wrote) stays as a node has it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use toml_edit::{Array, DocumentMut, Item, Table, value};

use crate::ContainerdVersion;
use crate::containerd_toml::write_hosts;

/// `containerd config default` of `version`.
pub fn default_config(version: ContainerdVersion) -> Result<String> {
    let bin = version.binary()?;
    let out = Command::new(&bin)
        .args(["config", "default"])
        .output()
        .with_context(|| format!("{} config default", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} config default: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Points the config at `dir` (root, state, sockets, CNI dirs, runc state), the pause image
/// `sandbox` and the plain-HTTP registries `hosts` (hosts.toml under `dir/certs.d`, the way
/// every version from 1.5 on reads them).
pub fn localize(
    text: &str,
    version: ContainerdVersion,
    dir: &Path,
    sandbox: &str,
    hosts: &[String],
) -> Result<String> {
    let mut doc: DocumentMut = text.parse().context("stock containerd config")?;
    let d = |sub: &str| dir.join(sub).display().to_string();
    doc["root"] = value(d("root"));
    doc["state"] = value(d("state"));
    // NRI's socket is machine-wide, and these snapshotters cannot work here.
    let mut disabled = Array::new();
    for p in [
        "io.containerd.nri.v1.nri",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.erofs",
    ] {
        disabled.push(p);
    }
    doc["disabled_plugins"] = value(disabled);
    table(&mut doc, &["grpc"])?.insert("address", value(d("state/containerd.sock")));
    table(&mut doc, &["ttrpc"])?.insert("address", value(d("state/containerd.sock.ttrpc")));
    table(&mut doc, &["debug"])?.insert("level", value("debug"));
    table(&mut doc, &["plugins", "io.containerd.internal.v1.opt"])?
        .insert("path", value(d("root/opt")));
    let certs = write_hosts(dir, hosts)?.display().to_string();
    let runc_root = d("state/runc");
    if version.config_v3() {
        let images = ["plugins", "io.containerd.cri.v1.images"];
        table(&mut doc, &[&images[..], &["pinned_images"]].concat())?
            .insert("sandbox", value(sandbox));
        table(&mut doc, &[&images[..], &["registry"]].concat())?
            .insert("config_path", value(certs));
        let runtime = ["plugins", "io.containerd.cri.v1.runtime"];
        // Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this test machine does not grant.
        table(&mut doc, &runtime)?.insert("restrict_oom_score_adj", value(true));
        let cni = table(&mut doc, &[&runtime[..], &["cni"]].concat())?;
        let mut bins = Array::new();
        bins.push(d("cni/bin"));
        cni.insert("bin_dirs", value(bins));
        cni.insert("conf_dir", value(d("cni/conf")));
        let runc = [&runtime[..], &["containerd", "runtimes", "runc", "options"]].concat();
        table(&mut doc, &runc)?.insert("Root", value(runc_root));
        table(&mut doc, &["plugins", "io.containerd.grpc.v1.cri"])?
            .insert("stream_server_port", value("0"));
    } else {
        let cri = ["plugins", "io.containerd.grpc.v1.cri"];
        let t = table(&mut doc, &cri)?;
        t.insert("sandbox_image", value(sandbox));
        t.insert("stream_server_port", value("0"));
        t.insert("restrict_oom_score_adj", value(true));
        table(&mut doc, &[&cri[..], &["registry"]].concat())?.insert("config_path", value(certs));
        let cni = table(&mut doc, &[&cri[..], &["cni"]].concat())?;
        cni.insert("bin_dir", value(d("cni/bin")));
        cni.insert("conf_dir", value(d("cni/conf")));
        let runc = [&cri[..], &["containerd", "runtimes", "runc", "options"]].concat();
        table(&mut doc, &runc)?.insert("Root", value(runc_root));
    }
    Ok(doc.to_string())
}

/// The table at `path`, created where missing.
fn table<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> Result<&'a mut Table> {
    let mut t = doc.as_table_mut();
    for key in path {
        t = t
            .entry(key)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{key}` of {path:?} is not a table"))?;
    }
    Ok(t)
}
