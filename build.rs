//! Stamps the binary with the git revision it is built from, for `--version` and
//! `ksit_exporter_build_info`: `make run`, `cargo build` and the image's build all say which
//! commit they are. `KSIT_GIT_REVISION` overrides it (a build outside a git checkout); without
//! either, the revision is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KSIT_GIT_REVISION");
    // HEAD moves on a commit or a checkout: watch what records it (also in a worktree, where
    // `.git` is a file that points elsewhere).
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let revision = std::env::var("KSIT_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=KSIT_GIT_REVISION={revision}");
}
