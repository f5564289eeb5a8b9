//! Path rules: which mirrors hold each path, in which mode, and how many of them confirm.
//!
//! Built once at mount from the `[[rule]]` list of the config. The first rule whose glob
//! matches a path decides; paths that no rule matches use the `mirror=` list with the global
//! `mode` and `ack`. Workers ask which records their mirror applies, verify and resync which
//! entries a mirror must hold, and the acks which mirrors a sync-mode reply waits for.
//! Nothing here touches a tree or a mirror.
//!
//! Globs are matched against the path relative to the mount root, with `/` as separator.
//! `*`, `?` and `[...]` never match a `/`, and `**` as a whole component matches any number
//! of components. A pattern ending in `/**` also matches the directory it names, so
//! `debug/**` keeps `debug` itself local as well.

use std::collections::BTreeMap;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::{Mode, MountConfig};
use crate::journal::RelPath;
use crate::mirror::{EntryKind, Manifest};

/// Index of a rule in [`Rules`]; the last index is the default for paths no rule matches.
pub type RuleId = usize;

/// What one rule decides for the paths it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The glob as configured; `None` for the default (paths that no rule matches).
    pub path: Option<String>,
    /// Indices of the mirrors that hold the paths.
    pub mirrors: Vec<usize>,
    pub mode: Mode,
    /// Mirrors of `mirrors` that must confirm a record in sync mode.
    pub ack: usize,
}

impl Policy {
    /// Returns true when a reply for a path of this rule waits for mirrors.
    pub fn waits(&self) -> bool {
        self.mode == Mode::Sync && !self.mirrors.is_empty()
    }
}

/// A compiled glob, split into components for the directory questions.
#[derive(Clone, Debug)]
struct Pattern {
    /// One matcher per component, `None` for a `**` component. Empty when the pattern
    /// cannot be split at `/` (alternatives in braces may contain one), so that every
    /// directory question gets the cautious answer.
    components: Vec<Option<GlobMatcher>>,
    /// The pattern is `**` or ends in `/**`, with no other `**` component.
    ends_in_recursive: bool,
}

/// Builds the matcher of a whole pattern or of one component: `*` never crosses a `/`.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// Checks a rule's glob, returning what is wrong with it.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(
            "the path glob is empty; write one relative to the mount root, as in app/*.log".into(),
        );
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "the path glob {pattern:?} starts with '/'; globs are relative to the mount root, \
             as in {:?}",
            pattern.trim_start_matches('/')
        ));
    }
    if pattern.ends_with('/') {
        return Err(format!(
            "the path glob {pattern:?} ends with '/'; write {:?} for a directory and \
             everything below it",
            format!("{}/**", pattern.trim_end_matches('/'))
        ));
    }
    glob(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid path glob {pattern:?}: {}", e.kind()))
}

impl Pattern {
    fn compile(pattern: &str) -> Pattern {
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut components = Vec::with_capacity(parts.len());
        for part in &parts {
            if *part == "**" {
                components.push(None);
                continue;
            }
            match glob(part) {
                Ok(g) if !pattern.contains('{') => components.push(Some(g.compile_matcher())),
                _ => {
                    components.clear();
                    break;
                }
            }
        }
        let recursive = components.iter().filter(|c| c.is_none()).count();
        let ends_in_recursive = !components.is_empty()
            && recursive == 1
            && components.last().is_some_and(Option::is_none);
        Pattern {
            components,
            ends_in_recursive,
        }
    }

    /// Returns true unless no path strictly below directory `dir` can match. Cautious: true
    /// whenever the pattern could not be split.
    fn may_match_below(&self, dir: &[&Path]) -> bool {
        if self.components.is_empty() {
            return true;
        }
        may_extend(&self.components, dir)
    }

    /// Returns true when the pattern matches every path strictly below directory `dir`.
    fn matches_all_below(&self, dir: &[&Path]) -> bool {
        if !self.ends_in_recursive {
            return false;
        }
        let prefix = &self.components[..self.components.len() - 1];
        dir.len() >= prefix.len()
            && prefix
                .iter()
                .zip(dir)
                .all(|(c, name)| c.as_ref().is_some_and(|m| m.is_match(name)))
    }
}

/// Returns true when some path made of `dir` and at least one more component matches the
/// component list `pattern` (`None` is `**`).
fn may_extend(pattern: &[Option<GlobMatcher>], dir: &[&Path]) -> bool {
    match (pattern.first(), dir.first()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(None), Some(_)) => may_extend(&pattern[1..], dir) || may_extend(pattern, &dir[1..]),
        (Some(Some(matcher)), Some(name)) => {
            matcher.is_match(name) && may_extend(&pattern[1..], &dir[1..])
        }
    }
}

/// The rules of a mount, compiled.
#[derive(Clone, Debug)]
pub struct Rules {
    set: GlobSet,
    /// Rule of each glob in `set`: a pattern ending in `/**` adds a second glob for the
    /// directory itself.
    glob_rule: Vec<RuleId>,
    patterns: Vec<Pattern>,
    /// The configured rules, then the default.
    policies: Vec<Policy>,
    /// Some rule's records are acknowledged otherwise than the default's.
    acks_depend_on_path: bool,
}

impl Rules {
    /// Compiles the rules of a validated configuration.
    pub fn new(config: &MountConfig) -> Rules {
        let mut builder = GlobSetBuilder::new();
        let mut glob_rule = Vec::new();
        let mut patterns = Vec::new();
        let mut policies = Vec::new();
        for (id, rule) in config.rules.iter().enumerate() {
            // The configuration checked every pattern with `check_pattern`.
            builder.add(glob(&rule.path).expect("pattern checked by the config"));
            glob_rule.push(id);
            if let Some(dir) = rule.path.strip_suffix("/**")
                && let Ok(g) = glob(dir)
            {
                builder.add(g);
                glob_rule.push(id);
            }
            patterns.push(Pattern::compile(&rule.path));
            policies.push(Policy {
                path: Some(rule.path.clone()),
                mirrors: rule.mirrors.clone(),
                mode: rule.mode,
                ack: rule.ack,
            });
        }
        policies.push(Policy {
            path: None,
            mirrors: config.default_mirrors(),
            mode: config.mode,
            ack: config.ack_count(),
        });
        let set = builder.build().expect("patterns checked by the config");
        let mut rules = Rules {
            set,
            glob_rule,
            patterns,
            policies,
            acks_depend_on_path: false,
        };
        rules.acks_depend_on_path = (0..rules.default_rule()).any(|id| rules.acks_differ(id));
        rules
    }

    /// Returns true when the acknowledgement of some path's records depends on its rule, so
    /// that `fs` must look up the rule of each record.
    pub fn acks_depend_on_path(&self) -> bool {
        self.acks_depend_on_path
    }

    /// Returns true when a reply for a record of `rule` may wait otherwise than one of the
    /// default: either waits, and they differ. Two rules that never wait need no note.
    pub fn acks_differ(&self, rule: RuleId) -> bool {
        let default = self.policy(self.default_rule());
        let policy = self.policy(rule);
        let same = policy.mirrors == default.mirrors
            && policy.mode == default.mode
            && policy.ack == default.ack;
        rule != self.default_rule() && (policy.waits() || default.waits()) && !same
    }

    /// Returns true when the config has no `[[rule]]`, so every path goes to every mirror.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Returns the rule that decides for `path`: the first that matches, else the default.
    pub fn rule_for(&self, path: &RelPath) -> RuleId {
        if self.is_empty() || path.is_root() {
            return self.default_rule();
        }
        let matched = self.set.matches(Path::new(path.as_os_str()));
        matched
            .into_iter()
            .map(|glob| self.glob_rule[glob])
            .min()
            .unwrap_or(self.default_rule())
    }

    /// Returns the id of the default rule.
    pub fn default_rule(&self) -> RuleId {
        self.policies.len() - 1
    }

    pub fn policy(&self, id: RuleId) -> &Policy {
        &self.policies[id]
    }

    /// Returns the rules, the default last.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Returns the rules that send their paths to `mirror`, the default last.
    pub fn policies_of(&self, mirror: usize) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.mirrors.contains(&mirror))
            .collect()
    }

    /// Returns true when the rules send a file, symlink or special file at `path` to `mirror`.
    pub fn selects_file(&self, mirror: usize, path: &RelPath) -> bool {
        self.policy(self.rule_for(path)).mirrors.contains(&mirror)
    }

    /// Returns true when the rules send the directory `path` to `mirror`: its rule selects the mirror,
    /// or a rule that selects the mirror may match a path below it. The result depends on
    /// the path alone, so records, resync and verify agree on it without a look at the tree.
    pub fn selects_dir(&self, mirror: usize, path: &RelPath) -> bool {
        if path.is_root() || self.selects_file(mirror, path) {
            return true;
        }
        let dir: Vec<&Path> = path.components().map(Path::new).collect();
        for (id, pattern) in self.patterns.iter().enumerate() {
            let selects = self.policies[id].mirrors.contains(&mirror);
            if selects && pattern.may_match_below(&dir) {
                return true;
            }
            if pattern.matches_all_below(&dir) {
                // Every path below goes to this rule, so later rules never see one.
                return false;
            }
        }
        self.policies[self.default_rule()].mirrors.contains(&mirror)
    }

    /// Returns true when the rules send an entry of kind `kind` at `path` to `mirror`.
    pub fn selects(&self, mirror: usize, path: &RelPath, kind: EntryKind) -> bool {
        match kind {
            EntryKind::Dir => self.selects_dir(mirror, path),
            _ => self.selects_file(mirror, path),
        }
    }

    /// Returns true when renaming `from` to `to` leaves what the rules send to `mirror` unchanged, for a
    /// file and for a directory with anything below it. Cautious: false when unsure.
    pub fn rename_keeps_selection(&self, mirror: usize, from: &RelPath, to: &RelPath) -> bool {
        self.selects_file(mirror, from) == self.selects_file(mirror, to)
            && self.selects_dir(mirror, from) == self.selects_dir(mirror, to)
            && self.same_rules_below(from, to)
    }

    /// Returns true when every path below `from` gets the same rule as the same path below
    /// `to`: each rule either matches nothing below both or everything below both.
    fn same_rules_below(&self, from: &RelPath, to: &RelPath) -> bool {
        if self.is_empty() {
            return true;
        }
        let from: Vec<&Path> = from.components().map(Path::new).collect();
        let to: Vec<&Path> = to.components().map(Path::new).collect();
        for pattern in &self.patterns {
            if pattern.matches_all_below(&from) && pattern.matches_all_below(&to) {
                return true;
            }
            if pattern.may_match_below(&from) || pattern.may_match_below(&to) {
                return false;
            }
        }
        true
    }

    /// Returns the entries of `manifest` that the rules send to `mirror`.
    pub fn select(&self, mirror: usize, manifest: &Manifest) -> Manifest {
        if self.is_empty() {
            return manifest.clone();
        }
        let entries: BTreeMap<_, _> = manifest
            .entries
            .iter()
            .filter(|(path, entry)| self.selects(mirror, path, entry.kind))
            .map(|(path, entry)| (path.clone(), entry.clone()))
            .collect();
        Manifest { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathRule;

    fn path(text: &str) -> RelPath {
        RelPath::from_bytes(text.as_bytes()).expect("valid path")
    }

    /// Mirror 0 is the default (`mirror=`), 1 and 2 are named.
    fn rules() -> Rules {
        let options = ["mirror=dir:/m0".to_string()];
        let mut config = crate::config::build(Path::new("/b"), Path::new("/m"), None, &options)
            .expect("valid options");
        let rule = |path: &str, mirrors: Vec<usize>, mode| PathRule {
            path: path.into(),
            ack: mirrors.len(),
            mirrors,
            mode,
        };
        config.rules = vec![
            rule("audit/**", vec![1, 2], Mode::Sync),
            rule("app/*.log", vec![1], Mode::Async),
            rule("debug/**", vec![], Mode::Async),
        ];
        Rules::new(&config)
    }

    #[test]
    fn first_match_wins() {
        let rules = rules();
        assert_eq!(rules.rule_for(&path("audit/a/b.log")), 0);
        assert_eq!(rules.rule_for(&path("audit")), 0);
        assert_eq!(rules.rule_for(&path("app/x.log")), 1);
        assert_eq!(rules.rule_for(&path("app/sub/x.log")), 3);
        assert_eq!(rules.rule_for(&path("app/x.log.1")), 3);
        assert_eq!(rules.rule_for(&path("debug")), 2);
        assert_eq!(rules.rule_for(&path("other.log")), 3);
        assert!(rules.policy(0).waits());
        assert!(!rules.policy(1).waits());
    }

    #[test]
    fn directories_follow_their_contents() {
        let rules = rules();
        assert!(rules.selects_dir(1, &path("app")));
        assert!(!rules.selects_dir(2, &path("app")));
        assert!(!rules.selects_dir(1, &path("app/sub")));
        assert!(rules.selects_dir(0, &path("app/sub")));
        assert!(!rules.selects_dir(0, &path("debug")));
        assert!(!rules.selects_dir(0, &path("debug/x")));
        assert!(!rules.selects_dir(0, &path("audit/x")));
        assert!(rules.selects_dir(2, &path("audit/x")));
        assert!(rules.selects_dir(0, &path("other")));
    }

    #[test]
    fn rename_selection() {
        let rules = rules();
        assert!(rules.rename_keeps_selection(1, &path("audit/a"), &path("audit/b")));
        assert!(rules.rename_keeps_selection(0, &path("x/a"), &path("y/b")));
        assert!(!rules.rename_keeps_selection(1, &path("app/x.log"), &path("app/x.log.1")));
        assert!(!rules.rename_keeps_selection(0, &path("app"), &path("app2")));
        assert!(!rules.rename_keeps_selection(0, &path("audit/d"), &path("d")));
    }

    #[test]
    fn pattern_errors_name_the_glob() {
        assert!(
            check_pattern("/audit/**")
                .unwrap_err()
                .contains("\"audit/**\"")
        );
        assert!(
            check_pattern("audit/")
                .unwrap_err()
                .contains("\"audit/**\"")
        );
        assert!(check_pattern("a/[b").unwrap_err().contains("\"a/[b\""));
        assert!(check_pattern("").unwrap_err().contains("empty"));
        assert!(check_pattern("app/{a,b}/*.log").is_ok());
    }
}
