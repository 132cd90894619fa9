//! Which images a pattern names, exactly as the kubelet decides it (`URLsMatchStr` in
//! `pkg/credentialprovider/keyring.go`): both sides are read as schemeless URLs; the ports must
//! be equal (none matches only none), the host names must have as many dot-separated labels and
//! each label must match its glob (`*`, `?`, `[a-z]`, `[^…]`, `\` escapes; a glob never spans a
//! dot), and the pattern's path must be a string prefix of the image's path.

/// A pattern that is not a valid glob (an unterminated `[…]` or a trailing `\`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad glob pattern {0:?}")]
pub struct BadPattern(pub String);

/// Whether `pattern` (e.g. `*.dkr.ecr.*.amazonaws.com`, `registry.example:5000/team`) names
/// `image` (`host[:port]/repository`, no tag). A bad glob is an error, as in the kubelet (which
/// then treats it as no match).
pub fn matches(pattern: &str, image: &str) -> Result<bool, BadPattern> {
    let (glob_host, glob_port, glob_path) = split(pattern);
    let (host, port, path) = split(image);
    if glob_port != port {
        return Ok(false);
    }
    let glob_labels: Vec<&str> = glob_host.split('.').collect();
    let labels: Vec<&str> = host.split('.').collect();
    if glob_labels.len() != labels.len() || !path.starts_with(glob_path) {
        return Ok(false);
    }
    for (g, l) in glob_labels.iter().zip(&labels) {
        if !glob_match(g, l).ok_or_else(|| BadPattern(pattern.to_owned()))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks that every label of `pattern`'s host is a valid glob.
pub fn validate(pattern: &str) -> Result<(), BadPattern> {
    let (host, _, _) = split(pattern);
    for label in host.split('.') {
        // Matching against the label itself walks the whole pattern.
        glob_match(label, label).ok_or_else(|| BadPattern(pattern.to_owned()))?;
    }
    Ok(())
}

/// `(host, port, path)` of a schemeless URL as Go's `url.Parse("https://" + s)` and
/// `net.SplitHostPort` see it: the authority ends at the first `/`, `?` or `#`; the path runs to
/// the first `?` or `#`; userinfo is dropped; without a valid `:port` the port is empty.
fn split(s: &str) -> (&str, &str, &str) {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    let (authority, rest) = s.split_at(end);
    let path = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_host_port(authority);
    (host, port, path)
}

fn split_host_port(authority: &str) -> (&str, &str) {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: "[::1]:5000".
        if let Some((h, tail)) = rest.split_once(']')
            && let Some(p) = tail.strip_prefix(':')
        {
            return (h, p);
        }
        return (authority, "");
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (authority, ""),
    }
}

/// Go's `filepath.Match` on one label (no separators occur in it). `None`: bad pattern, which
/// Go reports whether or not the name matches.
fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let mut i = 0;
    while i < p.len() {
        i += if p[i] == '*' {
            1
        } else {
            one(&p[i..], '\0')?.1
        };
    }
    // Iterative match with one backtrack point: the last `*` seen.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
            continue;
        }
        if pi < p.len() {
            let (ok, width) = one(&p[pi..], n[ni])?;
            if ok {
                pi += width;
                ni += 1;
                continue;
            }
        }
        let Some((sp, sn)) = star else {
            return Some(false);
        };
        pi = sp + 1;
        ni = sn + 1;
        star = Some((sp, sn + 1));
    }
    Some(p[pi..].iter().all(|&c| c == '*'))
}

/// Matches the pattern element at the start of `p` (non-empty: a literal, `?`, `\x` or `[…]`)
/// against `c`: `(matched, element width)`, `None` for a malformed element.
fn one(p: &[char], c: char) -> Option<(bool, usize)> {
    Some(match *p.first()? {
        '?' => (true, 1),
        '\\' => (*p.get(1)? == c, 2),
        '[' => class(p, c)?,
        lit => (lit == c, 1),
    })
}

/// A `[…]` class at the start of `p`: `(matched, width)`, `None` if malformed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, w) = class_char(&p[i..])?;
        i += w;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, w) = class_char(&p[i + 1..])?;
            hi = h;
            i += 1 + w;
        }
        if lo <= c && c <= hi {
            found = true;
        }
    }
    Some((found != negated, i))
}

/// One (possibly escaped) character of a class: `(char, width)`.
fn class_char(p: &[char]) -> Option<(char, usize)> {
    match *p.first()? {
        '-' | ']' => None,
        '\\' => Some((*p.get(1)?, 2)),
        c => Some((c, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, image: &str) -> bool {
        matches(pattern, image).unwrap()
    }

    #[test]
    fn kubelet_examples() {
        // From the kubelet's CredentialProviderConfig documentation.
        assert!(m("*.kubernetes.io", "abcde.kubernetes.io/repo"));
        assert!(!m("*.kubernetes.io", "kubernetes.io/repo"));
        assert!(!m("*.kubernetes.io", "a.b.kubernetes.io/repo"));
        assert!(m("*.*.kubernetes.io", "abcde.xyz.kubernetes.io"));
        assert!(m("prefix.*.io", "prefix.kubernetes.io"));
        assert!(m("*-good.kubernetes.io", "prefix-good.kubernetes.io"));
        assert!(m(
            "*.dkr.ecr.*.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app"
        ));
        assert!(!m("*-good.kubernetes.io", "prefix-bad.kubernetes.io"));
    }

    #[test]
    fn ports_paths_and_schemes() {
        assert!(m("127.0.0.1:5000", "127.0.0.1:5000/team/app"));
        assert!(!m("127.0.0.1", "127.0.0.1:5000/app"));
        assert!(!m("127.0.0.1:5000", "127.0.0.1/app"));
        assert!(!m("127.0.0.1:5001", "127.0.0.1:5000/app"));
        assert!(m("registry.io/team", "registry.io/team/app"));
        // A string prefix, as in the kubelet.
        assert!(m("registry.io/team", "registry.io/team-b/app"));
        assert!(!m("registry.io/team", "registry.io/other/app"));
        assert!(m("https://registry.io", "registry.io/app"));
        assert!(m("[::1]:5000", "[::1]:5000/app"));
        assert!(m("*.io", "registry.io"));
    }

    #[test]
    fn globs() {
        assert_eq!(glob_match("a?c", "abc"), Some(true));
        assert_eq!(glob_match("a*", "a"), Some(true));
        assert_eq!(glob_match("*x*y", "axbxy"), Some(true));
        assert_eq!(glob_match("*x*y", "axbxz"), Some(false));
        assert_eq!(glob_match("[a-c]x", "bx"), Some(true));
        assert_eq!(glob_match("[^a-c]x", "bx"), Some(false));
        assert_eq!(glob_match("[^a-c]x", "dx"), Some(true));
        assert_eq!(glob_match("\\*", "*"), Some(true));
        assert_eq!(glob_match("[a-", "a"), None);
        assert_eq!(glob_match("ab[", "x"), None);
        assert_eq!(glob_match("a\\", "a"), None);
        assert!(matches("[a.io", "a.io").is_err());
        assert!(validate("*.dkr.ecr.*.amazonaws.com").is_ok());
        assert!(validate("[x.io").is_err());
    }
}
