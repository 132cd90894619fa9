//! containerd's filter syntax (`filters` package), the part List requests use.
//!
//! A filter is selectors joined by `,` (all must match); a List request carries several
//! filters, any of which may match. A selector is a field path (`name`, `parent`, `kind`,
//! `labels.<key>`, components quoted when they hold dots: `labels."containerd.io/snapshot.ref"`)
//! optionally followed by an operator (`==`, `!=`, `~=` regular expression) and a value
//! (unquoted up to the next `,`, or a `"…"` string with Go escapes). A path alone tests
//! presence. The CRI unpacker sends
//! `labels."containerd.io/snapshot.ref"==<chainID>,parent==<parent>`.

use regex::Regex;

use crate::error::{Error, Result};
use crate::snapshots::metadata::Info;

/// Any of these filters matches (empty = everything matches).
#[derive(Debug, Default)]
pub struct FilterSet(Vec<Filter>);

/// All of these selectors match.
#[derive(Debug)]
struct Filter(Vec<Selector>);

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(Regex),
}

impl FilterSet {
    /// Parses each (non-empty) filter string; a syntax error is `InvalidArgument`.
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Self> {
        let mut out = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            out.push(
                Parser::new(f)
                    .filter()
                    .map_err(|msg| Error::InvalidArgument(format!("filter {f:?}: {msg}")))?,
            );
        }
        Ok(Self(out))
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.0.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let value = field(info, &self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Eq(v) => value == Some(v.as_str()),
            // As containerd: a missing field compares as "".
            Op::Ne(v) => value.unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.unwrap_or("")),
        }
    }
}

/// The adaptor containerd's snapshot service uses: `kind`, `name`, `parent`, `labels.<key>`.
fn field<'a>(info: &'a Info, path: &[String]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "kind" => Some(info.record.kind.filter_name()),
        "name" => Some(&info.name),
        "parent" => Some(&info.record.parent),
        "labels" => info.record.labels.get(&rest.join(".")).map(String::as_str),
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn filter(&mut self) -> PResult<Filter> {
        let mut sels = vec![self.selector()?];
        loop {
            self.skip_ws();
            if self.rest().is_empty() {
                return Ok(Filter(sels));
            }
            if !self.eat(",") {
                return Err(format!(
                    "unexpected {:?} at offset {}",
                    self.rest(),
                    self.pos
                ));
            }
            sels.push(self.selector()?);
        }
    }

    fn selector(&mut self) -> PResult<Selector> {
        let path = self.field_path()?;
        self.skip_ws();
        let op = if self.eat("==") {
            Op::Eq(self.value()?)
        } else if self.eat("!=") {
            Op::Ne(self.value()?)
        } else if self.eat("~=") {
            let v = self.value()?;
            Op::Matches(Regex::new(&v).map_err(|e| format!("bad regular expression: {e}"))?)
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field_path(&mut self) -> PResult<Vec<String>> {
        let mut path = Vec::new();
        loop {
            self.skip_ws();
            let part = if self.rest().starts_with('"') {
                self.quoted()?
            } else {
                let n = self
                    .rest()
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(self.rest().len());
                if n == 0 {
                    return Err(format!("expected a field at offset {}", self.pos));
                }
                let p = self.rest()[..n].to_owned();
                self.pos += n;
                p
            };
            path.push(part);
            if !self.eat(".") {
                return Ok(path);
            }
        }
    }

    fn value(&mut self) -> PResult<String> {
        self.skip_ws();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let n = self
            .rest()
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        if n == 0 {
            return Err(format!("expected a value at offset {}", self.pos));
        }
        let v = self.rest()[..n].to_owned();
        self.pos += n;
        Ok(v)
    }

    /// A double-quoted string with Go's escapes (`strconv.Unquote`).
    fn quoted(&mut self) -> PResult<String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let (_, e) = chars.next().ok_or("unterminated escape")?;
                    let simple = match e {
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'f' => Some('\x0c'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        'v' => Some('\x0b'),
                        '\\' | '"' | '\'' | '/' => Some(e),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        continue;
                    }
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => return Err(format!("unknown escape \\{e}")),
                    };
                    let mut code = 0u32;
                    for _ in 0..digits {
                        let (_, d) = chars.next().ok_or("short escape")?;
                        code = code * 16 + d.to_digit(16).ok_or("bad hex digit in escape")?;
                    }
                    out.push(char::from_u32(code).ok_or("escape is not a character")?);
                }
                c => out.push(c),
            }
        }
        Err(format!("unterminated string at offset {start}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::snapshots::metadata::{Kind, Record};

    fn info(name: &str, parent: &str, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            record: Record {
                id: 1,
                kind: Kind::Committed,
                parent: parent.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                created: SystemTime::UNIX_EPOCH,
                updated: SystemTime::UNIX_EPOCH,
                size: 0,
                inodes: 0,
            },
        }
    }

    #[test]
    fn cri_filter() {
        let f =
            FilterSet::parse(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#])
                .unwrap();
        assert!(f.matches(&info(
            "sha256:abc",
            "",
            &[("containerd.io/snapshot.ref", "sha256:abc")]
        )));
        assert!(!f.matches(&info(
            "x",
            "p",
            &[("containerd.io/snapshot.ref", "sha256:abc")]
        )));
        assert!(!f.matches(&info("x", "", &[])));
        let f = FilterSet::parse(&[r#"labels."a.b"==x,parent=="sha256:p""#]).unwrap();
        assert!(f.matches(&info("n", "sha256:p", &[("a.b", "x")])));
    }

    #[test]
    fn operators_and_or() {
        let i = info("n", "", &[("k", "v")]);
        let ok = |f: &[&str]| FilterSet::parse(f).unwrap().matches(&i);
        assert!(ok(&["labels.k"]));
        assert!(!ok(&["labels.z"]));
        assert!(ok(&["labels.k!=w"]));
        assert!(ok(&["labels.z!=w"]));
        assert!(ok(&["name~=^n$", "kind==view"]));
        assert!(!ok(&["name==m", "kind==view"]));
        assert!(ok(&["kind==committed,name==n"]));
        assert!(ok(&[r#"name=="\u006e""#]));
        for bad in [
            "==x",
            "name==",
            "name==\"x",
            "name==x y",
            "labels.",
            "name==\"\\q\"",
        ] {
            assert!(FilterSet::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
