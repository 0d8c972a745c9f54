//! The cache commands of the real binary (`load`, `check`, `list`, `prune`,
//! `export`, `verify`), run to completion with their output captured, or spawned
//! to be killed part-way.
//!
//! A failed expectation panics with the command line, both output streams and the
//! explanations of the fixtures given as context.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command};

use super::mirror::binary;
use super::{Explain, command_line, explain_all, run, spawn_logged};

/// How one command run ended.
#[derive(Debug, Clone)]
pub struct CliRun {
    /// The command line, as a shell would show it.
    pub command: String,
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output, then standard error.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics (with the output and the context's stories) unless it exited 0.
    #[track_caller]
    pub fn ok(self, context: &[&dyn Explain]) -> CliRun {
        if !self.success() {
            panic!("command should have succeeded:\n{}\n{}", self.explain(), explain_all(context));
        }
        self.assert_no_panic();
        self
    }

    /// Panics unless it exited with a non-zero code of its own (not a signal) and
    /// without a panic: a clear error.
    #[track_caller]
    pub fn fails(self, context: &[&dyn Explain]) -> CliRun {
        if self.success() || self.code.is_none() {
            panic!("command should have failed with an error:\n{}\n{}", self.explain(), explain_all(context));
        }
        self.assert_no_panic();
        self
    }

    #[track_caller]
    fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("stack backtrace"),
            "the command panicked:\n{}",
            self.explain()
        );
    }

    /// The lines of standard output.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Standard output as JSON; panics (with the output) if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("standard output is not one JSON document ({e}):\n{}", self.explain()))
    }
}

impl Explain for CliRun {
    fn explain(&self) -> String {
        format!(
            "---- `{}` exited with {} ----\n---- stdout ----\n{}\n---- stderr ----\n{}\n",
            self.command,
            self.code.map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// `ociregistry ARGS…` (the binary under test), run to completion.
pub fn run_cli<S: AsRef<OsStr>>(args: &[S]) -> CliRun {
    run_cli_with_env(args, &[])
}

/// [`run_cli`] with these environment variables set too.
pub fn run_cli_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> CliRun {
    let mut cmd = cli_command(args);
    cmd.envs(env.iter().copied());
    let command = command_line(&cmd);
    let out = run(&mut cmd);
    CliRun {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ociregistry ARGS…` started in the background, its output appended to `log`.
pub fn spawn_cli<S: AsRef<OsStr>>(args: &[S], log: &Path) -> Child {
    spawn_logged(&mut cli_command(args), log)
}

fn cli_command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args).env("RUST_BACKTRACE", "1");
    cmd
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The one output line of `run` that mentions `needle`; panics unless there is exactly one.
#[track_caller]
pub fn line_with<'a>(run: &'a CliRun, needle: &str) -> &'a str {
    let found: Vec<&str> = run.lines().into_iter().filter(|l| l.contains(needle)).collect();
    assert_eq!(found.len(), 1, "wanted one line mentioning {needle}:\n{}", run.explain());
    found[0]
}

/// Generates `spec` and pushes it to `up` as `repo:tag` (OCI media types).
pub fn seed(
    up: &super::upstream::Upstream,
    work: &Path,
    spec: &super::image::ImageSpec,
    repo: &str,
    tag: &str,
) -> super::image::Seeded {
    let layout = work.join(format!("layout-{}-{tag}", repo.replace('/', "-")));
    super::image::seed(up, &layout, spec, repo, tag, super::image::Format::Oci)
}

/// `up.test/repo:tag`: the full reference the commands, `list` and pin globs use.
pub fn full(image: &super::image::Seeded) -> String {
    format!("{}/{}", super::scenario::NAME, image.name_tag())
}
