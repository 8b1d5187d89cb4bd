//! What a config file may be before it is parsed at all: a size and a
//! nesting depth. The YAML parser's cost grows quadratically with nesting
//! (100,000 nested `[` took 30 s), so a file is measured by a linear scan
//! first and refused with one line when it is beyond either limit.
//!
//! The limits sit far above any real config: the largest the data plane
//! can hold (1,024 services, 32,768 IPv6 backends, 16,384 overrides) is
//! about 4 MB of YAML and 6 levels deep.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bytes a config file may have.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Levels of nesting (block indentation plus flow brackets) a config may
/// have.
pub const MAX_NESTING: usize = 64;

/// Reads a config file, refusing one larger than `MAX_CONFIG_BYTES`
/// (checked before reading, and again while reading: the file may grow),
/// one that is not a regular file (a FIFO would block the reload for good)
/// or one that is not UTF-8.
pub fn read_bounded(path: &Path) -> Result<String> {
    // Non-blocking: opening a FIFO would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("it is not a regular file");
    }
    if meta.len() > MAX_CONFIG_BYTES {
        bail!("{}", too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{}", too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).context("it is not UTF-8 text")
}

fn too_large(len: u64) -> String {
    format!(
        "{len} bytes is larger than a config may be ({} MiB)",
        MAX_CONFIG_BYTES >> 20
    )
}

/// Refuses YAML nested deeper than `MAX_NESTING`, naming the line where it
/// goes too deep. A linear scan, not a parser, that may count more levels
/// than the parser nests (a bracket opening a plain continuation line, odd
/// indentation) but never fewer than half of them:
/// - block levels are the open indentation columns, each leading `- `,
///   `? ` or `: ` opening one more (a sequence at its key's column is the
///   one case counted once for two levels);
/// - flow levels are `[` and `{` where a collection can start (a line's
///   start, after an indicator, inside a flow collection), not inside
///   quotes, comments or a block scalar's text (`|`, `>`).
pub fn check_nesting(text: &str) -> Result<()> {
    // Indentation columns of the open block levels.
    let mut blocks: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    // A block scalar's text: lines indented deeper than this column.
    let mut text_below: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let too_deep = || {
            anyhow::anyhow!(
                "line {}: nested more than {MAX_NESTING} levels deep (a config needs fewer than 10)",
                n + 1
            )
        };
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if let Some(parent) = text_below {
            if body.is_empty() || indent > parent {
                continue;
            }
            text_below = None;
        }
        // The column of the line's innermost node (after its indicators).
        let mut col = indent;
        if quote.is_none() && !body.is_empty() && !body.starts_with('#') {
            let mut rest = body;
            loop {
                while blocks.last().is_some_and(|&top| top >= col) {
                    blocks.pop();
                }
                blocks.push(col);
                if blocks.len() + flow > MAX_NESTING {
                    return Err(too_deep());
                }
                let Some(after) = ["- ", "? ", ": "].iter().find_map(|p| rest.strip_prefix(p))
                else {
                    break;
                };
                let inner = after.trim_start_matches(' ');
                col += rest.len() - inner.len();
                rest = inner;
                if rest.is_empty() {
                    break;
                }
            }
        }
        // Where a scalar or a collection may start: a line's start, after
        // an indicator (`- `, `? `, `: `), and inside a flow collection
        // after `[`, `{`, `,` or `:`.
        let mut at_start = true;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            let spaced = matches!(chars.peek(), None | Some(' ') | Some('\t'));
            match quote {
                Some('"') => match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        quote = None;
                        at_start = false;
                    }
                    _ => {}
                },
                Some(_) => {
                    // In single quotes `''` is a quote; a lone `'` ends it.
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            quote = None;
                            at_start = false;
                        }
                    }
                }
                None => match c {
                    ' ' | '\t' => {}
                    '#' if prev == ' ' || prev == '\t' => break,
                    '"' | '\'' if at_start => quote = Some(c),
                    '[' | '{' if at_start || flow > 0 => {
                        flow += 1;
                        if blocks.len() + flow > MAX_NESTING {
                            return Err(too_deep());
                        }
                        at_start = true;
                    }
                    ']' | '}' if flow > 0 => {
                        flow -= 1;
                        at_start = false;
                    }
                    ',' if flow > 0 => at_start = true,
                    ':' if flow > 0 || spaced => at_start = true,
                    '-' | '?' if at_start && spaced => {}
                    '|' | '>' if at_start && flow == 0 => {
                        text_below = Some(col);
                        break;
                    }
                    _ => at_start = false,
                },
            }
            prev = c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_configs_pass() {
        check_nesting(super::super::DEFAULT_CONFIG).unwrap();
        let deep_but_fine =
            "a:\n  b:\n    - c: [1, [2, {d: 3}]]\n      e: \"[[[[\"\n      f: '{{''{{'\n# [[[[[[\n";
        check_nesting(deep_but_fine).unwrap();
    }

    #[test]
    fn deep_flow_nesting_is_refused_fast() {
        let text = format!("services: {}", "[".repeat(100_000));
        let t0 = std::time::Instant::now();
        let e = check_nesting(&text).unwrap_err().to_string();
        assert!(t0.elapsed() < std::time::Duration::from_millis(100));
        assert!(e.contains("line 1: nested more than 64 levels"), "{e}");
        // 64 levels in all pass, 65 do not.
        check_nesting(&format!("a: {}", "[".repeat(63))).unwrap();
        assert!(check_nesting(&format!("a: {}", "[".repeat(64))).is_err());
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let mut text = String::new();
        for i in 0..100 {
            text += &format!("{}k{i}:\n", " ".repeat(i));
        }
        let e = check_nesting(&text).unwrap_err().to_string();
        assert!(e.contains("line 65:"), "{e}");
        // Compact sequences nest without new lines.
        let dashes = format!("{}x\n", "- ".repeat(70));
        assert!(check_nesting(&dashes).is_err());
        check_nesting(&format!("{}x\n", "- ".repeat(60))).unwrap();
        // Going back out frees the levels.
        let mut wide = String::new();
        for _ in 0..1000 {
            wide += "a:\n  b:\n    c: 1\n";
        }
        check_nesting(&wide).unwrap();
    }

    #[test]
    fn quotes_and_comments_hide_brackets() {
        let text = format!(
            "a: \"{0}\"\nb: '{0}'\nc: 1 # {0}\nd: \"\\\"{0}\"\n",
            "[".repeat(200)
        );
        check_nesting(&text).unwrap();
        // A plain scalar's `'` (don't) does not start a quote.
        check_nesting("a: don't\nb: [[1]]\n").unwrap();
    }

    #[test]
    fn nothing_in_a_plain_scalar_hides_what_follows() {
        let deep = format!("c: {}\n", "[".repeat(100));
        // A quote or a bracket inside a plain scalar opens nothing.
        for first in ["a: b \"\n", "note: rock 'n roll\n", "x: a[b\n", "y: a{b\n"] {
            let e = check_nesting(&format!("{first}{deep}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 2:"), "{first:?}: {e}");
            check_nesting(first).unwrap();
        }
        // `: ` opens a level like `- ` and `? `.
        assert!(check_nesting(&format!("? k\n: {}x\n", "- ".repeat(70))).is_err());
    }

    #[test]
    fn a_block_scalar_is_text_up_to_its_parent_column() {
        let text = "q: |\n  sum(rate(x{a=\"b\"}[5m]))\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nr: 1\n";
        check_nesting(text).unwrap();
        // A sibling key at the parent's column is not the scalar's text.
        let sibling = format!("- a: |\n    text\n  b: {}\n", "[".repeat(100));
        let e = check_nesting(&sibling).unwrap_err().to_string();
        assert!(e.contains("line 3:"), "{e}");
    }

    #[test]
    fn size_is_bounded() {
        let dir = std::env::temp_dir().join(format!("canary-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = read_bounded(&big).unwrap_err().to_string();
        assert!(e.contains("larger than a config may be (16 MiB)"), "{e}");
        std::fs::write(&big, "interface: x\n").unwrap();
        assert_eq!(read_bounded(&big).unwrap(), "interface: x\n");
        assert!(read_bounded(&dir).is_err());
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_bounded(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
