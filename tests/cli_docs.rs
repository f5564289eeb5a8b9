//! Help, man pages and shell completions: each comes from the clap definitions. The man pages
//! and completions committed under docs/man/ and completions/ must equal what the binary
//! generates now, the man page must list every subcommand, every subcommand's help must
//! give each option's default, and the completions must load in bash.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{COMMAND_TIMEOUT, logmirror, path_str, run};

/// The subcommands an operator uses; `generate-docs` is hidden.
const SUBCOMMANDS: [&str; 5] = ["mount", "status", "sync", "verify", "restore"];

/// Reads every file of `dir` into a map from file name to content.
fn read_files(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {dir:?}: {e}"))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = fs::read_to_string(entry.path())
                .unwrap_or_else(|e| panic!("read {:?}: {e}", entry.path()));
            (name, text)
        })
        .collect()
}

/// Generates the man pages and completions into a temporary directory and returns both
/// sets of files.
fn generate() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().expect("create temporary directory");
    let man = tmp.path().join("man");
    let completions = tmp.path().join("completions");
    let out = logmirror(&["generate-docs", path_str(&man), path_str(&completions)]);
    out.assert_success("logmirror generate-docs");
    (read_files(&man), read_files(&completions))
}

#[test]
fn committed_docs_are_current() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (man, completions) = generate();
    let stale = "run scripts/gen-docs and commit the result";
    assert_eq!(read_files(&repo.join("docs/man")), man, "docs/man: {stale}");
    assert_eq!(
        read_files(&repo.join("completions")),
        completions,
        "completions/: {stale}"
    );
}

#[test]
fn man_page_lists_subcommands() {
    let (man, _) = generate();
    let main = man.get("logmirror.1").expect("logmirror.1 generated");
    assert!(
        main.starts_with(".ie \\n(.g .ds Aq"),
        "not roff: {main:.200}"
    );
    for name in SUBCOMMANDS {
        assert!(
            main.contains(&format!("logmirror\\-{name}(1)")),
            "logmirror.1 does not list {name}"
        );
        let page = man
            .get(&format!("logmirror-{name}.1"))
            .unwrap_or_else(|| panic!("no man page for {name}: {:?}", man.keys()));
        assert!(
            page.contains(".SH OPTIONS"),
            "logmirror-{name}.1 has no options"
        );
    }
    assert!(
        !man.keys().any(|k| k.contains("generate")),
        "{:?}",
        man.keys()
    );
    let mount = &man["logmirror-mount.1"];
    assert!(
        mount.contains("metrics=IP:PORT"),
        "mount page lacks the -o keys"
    );
    let sync = &man["logmirror-sync.1"];
    assert!(sync.contains("\\-\\-progress\\-interval"), "{sync}");
    assert!(sync.contains("300s"), "sync page lacks the default timeout");
}

#[test]
fn completions_generated_per_shell() {
    let (_, completions) = generate();
    let names: Vec<&str> = completions.keys().map(String::as_str).collect();
    assert_eq!(names, ["_logmirror", "logmirror.bash", "logmirror.fish"]);
    for (name, text) in &completions {
        for subcommand in SUBCOMMANDS {
            assert!(text.contains(subcommand), "{name} lacks {subcommand}");
        }
        assert!(
            text.contains("progress-interval"),
            "{name} lacks --progress-interval"
        );
        assert!(
            !text.contains("generate-docs"),
            "{name} offers the hidden subcommand"
        );
    }
    assert!(completions["_logmirror"].starts_with("#compdef logmirror"));

    // bash loads the script and registers the completion function.
    let tmp = tempfile::tempdir().expect("create temporary directory");
    let script = tmp.path().join("logmirror.bash");
    fs::write(&script, &completions["logmirror.bash"]).expect("write bash completion");
    let out = run(
        Command::new("bash").args([
            "-c",
            "source \"$1\" && complete -p logmirror",
            "bash",
            path_str(&script),
        ]),
        COMMAND_TIMEOUT,
    );
    out.assert_success("bash sourcing the completion");
    assert!(out.stdout.contains("logmirror"), "{out}");
}

#[test]
fn help_shows_every_default() {
    // Options and their defaults, as each subcommand's --help must show them.
    let expected: [(&str, &[&str]); 5] = [
        (
            "mount",
            &[
                "-o <OPTIONS>",
                "[default: none]",
                "[default: off, the daemon detaches]",
                "--config <FILE>",
            ],
        ),
        ("status", &["--json", "[default: off, text]"]),
        (
            "sync",
            &[
                "--timeout <TIMEOUT>",
                "[default: 300s]",
                "--progress-interval <DURATION>",
                "[default: 10s]",
            ],
        ),
        (
            "verify",
            &[
                "[default: 300s]",
                "--repair",
                "[default: off]",
                "[default: 10s]",
            ],
        ),
        (
            "restore",
            &[
                "--force",
                "[default: off]",
                "--at <TIME>",
                "[default: the newest record]",
                "[default: 10s]",
            ],
        ),
    ];
    for (name, fragments) in expected {
        let out = logmirror(&[name, "--help"]);
        out.assert_success(&format!("logmirror {name} --help"));
        for fragment in fragments {
            assert!(
                out.stdout.contains(fragment),
                "{name} --help lacks {fragment:?}:\n{}",
                out.stdout
            );
        }
    }
    let mount = logmirror(&["mount", "--help"]);
    for key in [
        "metrics=IP:PORT|/path.sock",
        "max_backlog=SIZE",
        "when_full=block|fail",
    ] {
        assert!(mount.stdout.contains(key), "mount --help lacks {key}");
    }
    let top = logmirror(&["--help"]);
    top.assert_success("logmirror --help");
    for name in SUBCOMMANDS {
        assert!(top.stdout.contains(name), "--help lacks {name}");
    }
    assert!(!top.stdout.contains("generate-docs"), "{}", top.stdout);
}
