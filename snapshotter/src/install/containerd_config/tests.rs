use super::*;

fn apply(text: &str) -> Edit {
    edit(text, &Target::default(), ConfigVersion::V2).unwrap()
}

/// Parses with the plain `toml` crate, as a check independent of `toml_edit`'s rendering.
fn parsed(text: &str) -> toml::Table {
    text.parse::<toml::Table>().unwrap()
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let (last, parents) = path.split_last().unwrap();
    let mut current = table;
    for key in parents {
        current = current[*key].as_table().unwrap();
    }
    &current[*last]
}

fn assert_v2_settings(text: &str) {
    let t = parsed(text);
    assert_eq!(lookup(&t, &["version"]).as_integer(), Some(2));
    assert_eq!(
        lookup(&t, &["proxy_plugins", "chunksnap", "type"]).as_str(),
        Some("snapshot")
    );
    assert_eq!(
        lookup(&t, &["proxy_plugins", "chunksnap", "address"]).as_str(),
        Some(DEFAULT_SOCKET)
    );
    let cri = ["plugins", CRI_V2, "containerd"];
    let key = |k: &'static str| [cri[0], cri[1], cri[2], k];
    assert_eq!(lookup(&t, &key("snapshotter")).as_str(), Some("chunksnap"));
    assert_eq!(
        lookup(&t, &key("disable_snapshot_annotations")).as_bool(),
        Some(false)
    );
}

/// The config Debian's containerd 1.6 package ships.
const DEBIAN: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

#[test]
fn empty_file_gets_a_minimal_v2_config() {
    let out = apply("");
    assert!(out.changed);
    assert_eq!(out.version, ConfigVersion::V2);
    assert_v2_settings(&out.text);
    assert_eq!(
        out.text,
        "version = 2\n\
         \n\
         [proxy_plugins.chunksnap]\n\
         type = \"snapshot\"\n\
         address = \"/run/chunksnap/chunksnap.sock\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         snapshotter = \"chunksnap\"\n\
         disable_snapshot_annotations = false\n"
    );
}

#[test]
fn empty_file_gets_a_minimal_v3_config() {
    let out = edit(
        "# managed elsewhere\n",
        &Target::default(),
        ConfigVersion::V3,
    )
    .unwrap();
    assert_eq!(out.version, ConfigVersion::V3);
    assert!(
        out.text.starts_with("# managed elsewhere\n"),
        "{}",
        out.text
    );
    let t = parsed(&out.text);
    assert_eq!(lookup(&t, &["version"]).as_integer(), Some(3));
    assert_eq!(
        lookup(&t, &["plugins", CRI_IMAGES_V3, "snapshotter"]).as_str(),
        Some("chunksnap")
    );
    assert_eq!(
        lookup(
            &t,
            &["plugins", CRI_IMAGES_V3, "disable_snapshot_annotations"]
        )
        .as_bool(),
        Some(false)
    );
    assert_eq!(
        lookup(&t, &["proxy_plugins", "chunksnap", "address"]).as_str(),
        Some(DEFAULT_SOCKET)
    );
    // No v2 CRI table in a v3 file.
    assert!(t["plugins"].get(CRI_V2).is_none());
}

#[test]
fn applying_twice_changes_nothing() {
    for (input, version) in [
        ("", ConfigVersion::V2),
        ("", ConfigVersion::V3),
        (DEBIAN, ConfigVersion::V2),
        ("version = 3\n", ConfigVersion::V2),
    ] {
        let once = edit(input, &Target::default(), version).unwrap();
        assert!(once.changed);
        let twice = edit(&once.text, &Target::default(), version).unwrap();
        assert!(!twice.changed, "second edit changed:\n{}", twice.text);
        assert_eq!(twice.text, once.text);
    }
}

#[test]
fn debian_config_keeps_its_settings_and_layout() {
    let out = apply(DEBIAN);
    assert_v2_settings(&out.text);
    // Everything that was there is still there, byte for byte; the new tables follow it.
    assert_eq!(
        out.text,
        format!(
            "{DEBIAN}\n\
             [proxy_plugins.chunksnap]\n\
             type = \"snapshot\"\n\
             address = \"/run/chunksnap/chunksnap.sock\"\n\
             \n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             snapshotter = \"chunksnap\"\n\
             disable_snapshot_annotations = false\n"
        )
    );
    let t = parsed(&out.text);
    assert_eq!(
        lookup(&t, &["plugins", CRI_V2, "cni", "bin_dir"]).as_str(),
        Some("/usr/lib/cni")
    );
}

#[test]
fn comments_and_unrelated_settings_survive() {
    let input = r#"# containerd config, managed by hand
version = 2
root = "/var/lib/containerd" # state lives here

[plugins."io.containerd.grpc.v1.cri"]
  # pause image pinned by the platform team
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    # overlayfs until chunksnap rolls out
    snapshotter = "overlayfs"   # old default
    default_runtime_name = "runc"
"#;
    let out = apply(input);
    assert_v2_settings(&out.text);
    for kept in [
        "# containerd config, managed by hand\n",
        "root = \"/var/lib/containerd\" # state lives here\n",
        "  # pause image pinned by the platform team\n",
        "  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
        "    # overlayfs until chunksnap rolls out\n",
        "    default_runtime_name = \"runc\"\n",
    ] {
        assert!(out.text.contains(kept), "lost {kept:?} in:\n{}", out.text);
    }
    // The replaced value keeps its indentation and trailing comment.
    assert!(
        out.text
            .contains("    snapshotter = \"chunksnap\"   # old default\n"),
        "{}",
        out.text
    );
}

#[test]
fn a_different_snapshotter_is_replaced() {
    let input = "version = 2\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                 snapshotter = \"stargz\"\n\
                 disable_snapshot_annotations = true\n\
                 [proxy_plugins.stargz]\n\
                 type = \"snapshot\"\n\
                 address = \"/run/stargz/stargz.sock\"\n";
    let out = apply(input);
    assert_v2_settings(&out.text);
    assert!(!out.text.contains("snapshotter = \"stargz\""));
    assert!(!out.text.contains("= true"));
    // Other proxy plugins stay registered.
    let t = parsed(&out.text);
    assert_eq!(
        lookup(&t, &["proxy_plugins", "stargz", "address"]).as_str(),
        Some("/run/stargz/stargz.sock")
    );
}

#[test]
fn dotted_keys_stay_dotted() {
    let input = r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
containerd.snapshotter = "overlayfs"
containerd.default_runtime_name = "runc"
"#;
    let out = apply(input);
    assert_v2_settings(&out.text);
    assert!(
        out.text
            .contains("containerd.snapshotter = \"chunksnap\"\n"),
        "{}",
        out.text
    );
    assert!(
        out.text
            .contains("containerd.disable_snapshot_annotations = false\n"),
        "{}",
        out.text
    );
    assert!(
        !out.text
            .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd]")
    );
    assert!(!apply(&out.text).changed);
}

#[test]
fn dotted_root_keys_and_inline_tables_are_edited_in_place() {
    let input = r#"version = 2
proxy_plugins.chunksnap = { type = "snapshot", address = "/old.sock" }
plugins."io.containerd.grpc.v1.cri".containerd.snapshotter = "overlayfs"
"#;
    let out = apply(input);
    assert_v2_settings(&out.text);
    assert!(
        out.text.contains(
            "proxy_plugins.chunksnap = { type = \"snapshot\", address = \"/run/chunksnap/chunksnap.sock\" }"
        ),
        "{}",
        out.text
    );
    assert!(
        out.text.contains(
            "plugins.\"io.containerd.grpc.v1.cri\".containerd.disable_snapshot_annotations = false"
        ),
        "{}",
        out.text
    );
    assert!(
        !out.text.contains('['),
        "no table headers added:\n{}",
        out.text
    );
    assert!(!apply(&out.text).changed);
}

#[test]
fn literal_strings_with_the_right_value_are_left_alone() {
    let input = "version = 3\n\
                 [proxy_plugins.chunksnap]\n\
                 type = 'snapshot'\n\
                 address = '/run/chunksnap/chunksnap.sock'\n\
                 [plugins.'io.containerd.cri.v1.images']\n\
                 snapshotter = 'chunksnap'\n\
                 disable_snapshot_annotations = false\n";
    let out = apply(input);
    assert!(!out.changed, "{}", out.text);
    assert_eq!(out.version, ConfigVersion::V3);
}

#[test]
fn v3_file_version_wins_over_the_default() {
    let input = "version = 3\n\
                 [plugins.'io.containerd.cri.v1.images']\n\
                 snapshotter = 'overlayfs'\n\
                 [plugins.'io.containerd.cri.v1.images'.pinned_images]\n\
                 sandbox = 'registry.k8s.io/pause:3.10'\n";
    let out = apply(input);
    assert_eq!(out.version, ConfigVersion::V3);
    let t = parsed(&out.text);
    assert_eq!(
        lookup(&t, &["plugins", CRI_IMAGES_V3, "snapshotter"]).as_str(),
        Some("chunksnap")
    );
    assert_eq!(
        lookup(&t, &["plugins", CRI_IMAGES_V3, "pinned_images", "sandbox"]).as_str(),
        Some("registry.k8s.io/pause:3.10")
    );
    assert!(t["plugins"].get(CRI_V2).is_none());
}

#[test]
fn custom_plugin_name_and_socket() {
    let target = Target {
        plugin: "cs".to_owned(),
        socket: "/run/cs.sock".to_owned(),
    };
    let out = edit("version = 2\n", &target, ConfigVersion::V2).unwrap();
    let t = parsed(&out.text);
    assert_eq!(
        lookup(&t, &["proxy_plugins", "cs", "address"]).as_str(),
        Some("/run/cs.sock")
    );
    assert_eq!(
        lookup(&t, &["plugins", CRI_V2, "containerd", "snapshotter"]).as_str(),
        Some("cs")
    );
}

#[test]
fn runtimes_with_their_own_snapshotter_are_reported() {
    let input = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
  snapshotter = "devmapper"
"#;
    let out = apply(input);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("`kata`") && out.warnings[0].contains("devmapper"));
    assert!(apply(DEBIAN).warnings.is_empty());
}

#[test]
fn version_one_and_unknown_versions_are_refused() {
    let v1 = "[plugins.cri]\nsandbox_image = \"pause\"\n";
    assert!(matches!(
        edit(v1, &Target::default(), ConfigVersion::V2),
        Err(Error::VersionOne)
    ));
    assert!(matches!(
        edit("version = 4\n", &Target::default(), ConfigVersion::V2),
        Err(Error::UnsupportedVersion(v)) if v == "4"
    ));
    assert!(matches!(
        edit("version = \"2\"\n", &Target::default(), ConfigVersion::V2),
        Err(Error::UnsupportedVersion(_))
    ));
}

#[test]
fn a_non_table_in_the_way_is_an_error() {
    let input = "version = 2\nproxy_plugins = \"nope\"\n";
    let err = edit(input, &Target::default(), ConfigVersion::V2).unwrap_err();
    assert!(
        matches!(&err, Error::NotATable(path) if path == "proxy_plugins"),
        "{err}"
    );
}

#[test]
fn config_version_parses_from_flags() {
    assert_eq!("2".parse::<ConfigVersion>().unwrap(), ConfigVersion::V2);
    assert_eq!(" 3".parse::<ConfigVersion>().unwrap(), ConfigVersion::V3);
    assert!("1".parse::<ConfigVersion>().is_err());
}
