//! What canaryctl writes about itself: shell completions and man pages,
//! both generated from the clap definitions in `cli.rs`, so they cannot
//! drift from the commands.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

use crate::cli::Args;

/// The completion script for `shell` on `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    // clap_complete offers hidden commands too: complete a copy without them.
    let full = Args::command();
    let mut cmd = clap::Command::new("canaryctl")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut cmd, "canaryctl", out);
}

/// canaryctl.1 and a page per visible command (canaryctl-set-weight.1, ...)
/// into `dir`; returns the files written.
pub fn man_pages(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Args::command();
    let mut written = Vec::new();
    let mut page = |cmd: &clap::Command, name: &str, bin: &str| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().bin_name(bin.to_string()))
            .title(name)
            .render(&mut buf)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    page(&cmd, "canaryctl", "canaryctl")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        page(
            sub,
            &format!("canaryctl-{name}"),
            &format!("canaryctl {name}"),
        )?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("set-weight"), "{shell}: {text}");
            assert!(
                !text.contains("man-pages"),
                "{shell} offers the hidden man-pages"
            );
        }
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = std::env::temp_dir().join(format!("canaryctl-man-{}", std::process::id()));
        let files = man_pages(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"canaryctl.1".to_string()), "{names:?}");
        assert!(
            names.contains(&"canaryctl-set-weight.1".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("man-pages")), "{names:?}");
        let top = std::fs::read_to_string(dir.join("canaryctl.1")).unwrap();
        assert!(top.contains(".TH canaryctl"), "{top}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
