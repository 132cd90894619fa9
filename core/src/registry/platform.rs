//! Which manifest of a multi-platform image to use: one rule for the node (`chunksnap`) and
//! the converter's `extract`, so both pick the same manifest for the same image.
//!
//! The rule, following OCI platform matching as containerd applies it:
//! 1. platforms compare as `os/arch[/variant]` after normalising: architecture aliases
//!    (`x86_64` → `amd64`, `aarch64` → `arm64`), and the default variant of an architecture
//!    is implied when none is given (`arm64` is `arm64/v8`, `arm` is `arm/v7`, `amd64/v1` is
//!    `amd64`);
//! 2. the first manifest whose platform equals the wanted one is chosen;
//! 3. failing that, a manifest that names no platform (a plain image manifest rather than an
//!    index) stands for any platform;
//! 4. otherwise nothing is chosen: a manifest of another platform is never used.

use std::fmt;

use super::PlatformManifest;

/// An OCI platform, `os/arch[/variant]`, normalised (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    /// `None` when the architecture has no variants (or none is implied).
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`; `None` for any other shape.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().filter(|p| !p.is_empty());
        if parts.next().is_some() {
            return None;
        }
        Some(Self::normalized(os, arch, variant))
    }

    /// The platform this program runs on (always `linux`).
    pub fn host() -> Self {
        Self::normalized("linux", std::env::consts::ARCH, None)
    }

    fn normalized(os: &str, arch: &str, variant: Option<&str>) -> Self {
        let arch = match arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "x86" | "i386" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        let variant = match (arch, variant) {
            ("arm64", None | Some("8")) => Some("v8"),
            ("arm", None | Some("7")) => Some("v7"),
            ("amd64", Some("v1")) => None,
            (_, v) => v,
        };
        Self {
            os: os.to_ascii_lowercase(),
            arch: arch.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The manifest of `manifests` to use on `want` (the rule in the module docs).
pub fn choose_platform<'a>(
    manifests: &'a [PlatformManifest],
    want: &Platform,
) -> Option<&'a PlatformManifest> {
    manifests
        .iter()
        .find(|m| m.platform.as_deref().and_then(Platform::parse).as_ref() == Some(want))
        .or_else(|| manifests.iter().find(|m| m.platform.is_none()))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use oci_client::manifest::OciImageManifest;

    use super::*;
    use crate::registry::RawManifest;
    use chunksnap_format::digest::Digest;

    fn manifest(platform: Option<&str>) -> PlatformManifest {
        PlatformManifest {
            platform: platform.map(str::to_owned),
            raw: RawManifest {
                bytes: Bytes::new(),
                digest: Digest::of(platform.unwrap_or("").as_bytes()),
                media_type: String::new(),
            },
            manifest: OciImageManifest::default(),
        }
    }

    fn chosen(platforms: &[Option<&str>], want: &str) -> Option<Option<String>> {
        let manifests: Vec<_> = platforms.iter().map(|p| manifest(*p)).collect();
        let want = Platform::parse(want).unwrap();
        choose_platform(&manifests, &want).map(|m| m.platform.clone())
    }

    #[test]
    fn parse_normalises_aliases_and_default_variants() {
        let p = |s| Platform::parse(s).map(|p| p.to_string());
        assert_eq!(p("linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(p("linux/x86_64").as_deref(), Some("linux/amd64"));
        assert_eq!(p("linux/amd64/v1").as_deref(), Some("linux/amd64"));
        assert_eq!(p("linux/amd64/v3").as_deref(), Some("linux/amd64/v3"));
        assert_eq!(p("linux/aarch64").as_deref(), Some("linux/arm64/v8"));
        assert_eq!(p("linux/arm64/8").as_deref(), Some("linux/arm64/v8"));
        assert_eq!(p("linux/arm").as_deref(), Some("linux/arm/v7"));
        assert_eq!(p("linux/arm/v6").as_deref(), Some("linux/arm/v6"));
        for bad in ["", "linux", "linux/", "/amd64", "linux/arm/v7/x"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_host_is_linux_on_this_architecture() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_eq!(Platform::parse(&host.to_string()), Some(host));
    }

    #[test]
    fn exact_platform_wins_over_a_manifest_without_one() {
        let index = [None, Some("linux/arm64"), Some("linux/amd64")];
        assert_eq!(
            chosen(&index, "linux/amd64"),
            Some(Some("linux/amd64".into()))
        );
        assert_eq!(chosen(&index, "linux/s390x"), Some(None));
    }

    #[test]
    fn variants_must_match_after_defaults_are_implied() {
        let index = [
            Some("linux/arm/v6"),
            Some("linux/arm/v7"),
            Some("linux/arm64/v8"),
            Some("linux/amd64/v3"),
        ];
        assert_eq!(
            chosen(&index, "linux/arm"),
            Some(Some("linux/arm/v7".into()))
        );
        assert_eq!(
            chosen(&index, "linux/arm/v6"),
            Some(Some("linux/arm/v6".into()))
        );
        assert_eq!(
            chosen(&index, "linux/arm64"),
            Some(Some("linux/arm64/v8".into()))
        );
        // amd64/v3 needs a v3 machine: a plain amd64 host does not take it.
        assert_eq!(chosen(&index, "linux/amd64"), None);
        assert_eq!(
            chosen(&index, "linux/amd64/v3"),
            Some(Some("linux/amd64/v3".into()))
        );
    }

    #[test]
    fn a_plain_manifest_stands_for_any_platform_and_others_never_do() {
        assert_eq!(chosen(&[None], "linux/riscv64"), Some(None));
        assert_eq!(chosen(&[Some("linux/arm64")], "linux/amd64"), None);
        assert_eq!(chosen(&[Some("windows/amd64")], "linux/amd64"), None);
    }
}
