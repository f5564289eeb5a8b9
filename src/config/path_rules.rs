//! Named mirrors (`[mirrors.NAME]`) and path rules (`[[rule]]`) of the config file, checked
//! against each other and resolved to mirror indices. They exist in the file only: an `-o`
//! string has no syntax for a list of tables.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Ack, Error, MirrorSpec, Mode, MountConfig, NumberOrText};

/// One `[[rule]]`, resolved against the mirror list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// Glob relative to the mount root, as written; see `crate::rules` for its syntax.
    pub path: String,
    /// Indices into [`MountConfig::mirrors`]; empty keeps the paths local only.
    pub mirrors: Vec<usize>,
    /// Default: the global `mode`.
    pub mode: Mode,
    /// Mirrors of `mirrors` that must confirm a sync-mode record. Default: all of them.
    pub ack: usize,
}

/// `[mirrors.NAME]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedMirror {
    url: String,
}

/// `[[rule]]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleEntry {
    path: String,
    mirrors: Vec<String>,
    mode: Option<String>,
    ack: Option<NumberOrText>,
}

/// Maximum length of a mirror name, in bytes.
const MAX_NAME_BYTES: usize = 64;

/// Reads the `mirrors` table of the file: name and URL of each named mirror, in name order.
pub(super) fn named_mirrors(value: toml::Value) -> Result<Vec<(String, String)>, String> {
    let toml::Value::Table(table) = value else {
        return Err(
            "mirrors must be a table of named mirrors, as in [mirrors.offsite] with \
                    url = \"s3://BUCKET/PREFIX\"; list unnamed mirrors with mirror = [...]"
                .into(),
        );
    };
    let mut named = Vec::new();
    for (name, value) in table {
        let entry: NamedMirror = value.try_into().map_err(|e: toml::de::Error| {
            format!("[mirrors.{name}]: {}; it takes url = \"dir:/path\" or url = \"s3://BUCKET/PREFIX\"", e.message())
        })?;
        named.push((name, entry.url));
    }
    Ok(named)
}

/// Adds the named mirrors to `config.mirrors` and resolves the rules, checking that every
/// name is valid and used, and that each rule's mode and ack fit its mirrors.
pub(super) fn resolve(
    config: &mut MountConfig,
    named: Vec<(String, String)>,
    rules: Vec<RuleEntry>,
) -> Result<(), Error> {
    let mut by_name = BTreeMap::new();
    for (name, url) in named {
        check_name(&name)?;
        let spec = MirrorSpec::parse(&url).map_err(|e| match e {
            Error::InvalidValue {
                value, expected, ..
            } => Error::InvalidValue {
                key: format!("mirrors.{name}.url"),
                value,
                expected,
            },
            other => other,
        })?;
        by_name.insert(name.clone(), config.mirrors.len());
        config.mirrors.push(spec);
        config.mirror_names.push(Some(name));
    }
    for (number, entry) in rules.into_iter().enumerate() {
        let rule = resolve_rule(config, &by_name, number + 1, entry)?;
        config.rules.push(rule);
    }
    for (name, index) in &by_name {
        if !config.rules.iter().any(|r| r.mirrors.contains(index)) {
            return Err(Error::Conflict(format!(
                "mirror {name:?} is not used by any [[rule]], so it would receive nothing; add \
                 it to a rule's mirrors or remove [mirrors.{name}]"
            )));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        return Ok(());
    }
    Err(Error::InvalidValue {
        key: "mirrors".into(),
        value: name.into(),
        expected: format!(
            "expected a mirror name of 1 to {MAX_NAME_BYTES} letters, digits, '-' or '_', as in \
             [mirrors.offsite]"
        ),
    })
}

fn resolve_rule(
    config: &MountConfig,
    by_name: &BTreeMap<String, usize>,
    number: usize,
    entry: RuleEntry,
) -> Result<PathRule, Error> {
    let invalid = |reason: String| Error::Rule {
        number,
        path: entry.path.clone(),
        reason,
    };
    crate::rules::check_pattern(&entry.path).map_err(&invalid)?;
    let mut mirrors = Vec::new();
    for name in &entry.mirrors {
        let Some(&index) = by_name.get(name) else {
            let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "unknown mirror {name:?}; the named mirrors are: {}. Define it as \
                 [mirrors.{name}] with a url",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if mirrors.contains(&index) {
            return Err(invalid(format!("mirror {name:?} is listed twice")));
        }
        mirrors.push(index);
    }
    let mode = match entry.mode.as_deref() {
        None => config.mode,
        Some("sync") => Mode::Sync,
        Some("async") => Mode::Async,
        Some(other) => {
            return Err(invalid(format!(
                "invalid mode {other:?}; expected sync or async"
            )));
        }
    };
    if mirrors.is_empty() && (entry.mode.as_deref() == Some("sync") || entry.ack.is_some()) {
        return Err(invalid(
            "mode = \"sync\" and ack need mirrors, and this rule lists none (local only); \
             remove them or list mirrors"
                .into(),
        ));
    }
    let ack = match entry.ack.map(NumberOrText::into_text).as_deref() {
        None | Some("all") => Ack::All,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n >= 1 => Ack::Count(n),
            _ => {
                return Err(invalid(format!(
                    "invalid ack {text:?}; expected all or a number of mirrors from 1 up"
                )));
            }
        },
    };
    let ack = match ack {
        Ack::All => mirrors.len(),
        Ack::Count(n) if n > mirrors.len() => {
            return Err(invalid(format!(
                "ack = {n} is larger than the number of its mirrors ({}); use ack = \"all\" or \
                 at most {}",
                mirrors.len(),
                mirrors.len()
            )));
        }
        Ack::Count(n) => n,
    };
    Ok(PathRule {
        path: entry.path,
        mirrors,
        mode,
        ack,
    })
}
