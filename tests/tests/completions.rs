//! `canaryctl completions SHELL`: the script bash sources completes what an
//! operator types. Run against the built binary's own output, in a real bash.

use anyhow::{ensure, Context, Result};
use canary_tests::bin_path;
use std::process::Command;

/// The words bash's completion function offers for `line` (the cursor at its
/// end), with canaryctl's bash script sourced first.
fn bash_complete(script: &std::path::Path, line: &str) -> Result<Vec<String>> {
    let words: Vec<&str> = line.split(' ').collect();
    let cword = words.len() - 1;
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}' || exit 3\n\
         COMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _canaryctl canaryctl '{}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .context("running bash")?;
    ensure!(
        out.status.success(),
        "bash failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect())
}

fn script(shell: &str) -> Result<Vec<u8>> {
    let out = Command::new(bin_path("canaryctl")?)
        .args(["completions", shell])
        .output()?;
    ensure!(
        out.status.success(),
        "canaryctl completions {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

#[test]
fn bash_completes_commands_and_their_values() -> Result<()> {
    let path =
        std::env::temp_dir().join(format!("canaryctl-completion-{}.bash", std::process::id()));
    std::fs::write(&path, script("bash")?)?;
    let result = (|| -> Result<()> {
        assert_eq!(bash_complete(&path, "canaryctl set-w")?, vec!["set-weight"]);
        let rollout = bash_complete(&path, "canaryctl rollout ")?;
        for verb in ["start", "pause", "resume", "abort", "finish"] {
            assert!(
                rollout.iter().any(|w| w == verb),
                "rollout offers {rollout:?}"
            );
        }
        let top = bash_complete(&path, "canaryctl ")?;
        assert!(top.iter().any(|w| w == "status"), "{top:?}");
        assert!(
            !top.iter().any(|w| w == "man-pages"),
            "the hidden command is offered: {top:?}"
        );
        assert_eq!(
            bash_complete(&path, "canaryctl completions f")?,
            vec!["fish"]
        );
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() -> Result<()> {
    for (shell, check) in [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])] {
        let text = String::from_utf8(script(shell)?)?;
        assert!(
            text.contains("set-weight") && text.contains("rollout"),
            "{shell}: {text}"
        );
        // A syntax check where the shell is installed (it is not a
        // dependency of canary; bash is).
        let path = std::env::temp_dir().join(format!(
            "canaryctl-completion-{}.{shell}",
            std::process::id()
        ));
        std::fs::write(&path, &text)?;
        let checked = Command::new(check[0]).arg(check[1]).arg(&path).output();
        let _ = std::fs::remove_file(&path);
        match checked {
            Ok(out) => assert!(
                out.status.success(),
                "{shell} rejects the script: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("{shell} not installed ({e}): syntax not checked"),
        }
    }
    Ok(())
}
