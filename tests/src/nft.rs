//! nftables counters inside a namespace: an independent witness of what a
//! host sent or received, to compare with the data plane's own counters.

use crate::netns::Netns;
use anyhow::{Context, Result};

pub struct NftCounters<'a> {
    ns: &'a Netns,
}

impl<'a> NftCounters<'a> {
    /// Creates `table inet canary_test` with named counters and rules; each
    /// rule is `(hook, match, counter)`, e.g.
    /// `("output", "ip daddr 198.18.100.1 tcp dport 80", "to_vip")`.
    pub fn install(ns: &'a Netns, rules: &[(&str, &str, &str)]) -> Result<NftCounters<'a>> {
        let mut script = String::from("table inet canary_test {\n");
        for (_, _, name) in rules {
            script.push_str(&format!("  counter {name} {{ }}\n"));
        }
        for hook in ["input", "output"] {
            script.push_str(&format!(
                "  chain {hook} {{ type filter hook {hook} priority 0; policy accept;\n"
            ));
            for (h, m, name) in rules.iter().filter(|r| r.0 == hook) {
                let _ = h;
                script.push_str(&format!("    {m} counter name {name}\n"));
            }
            script.push_str("  }\n");
        }
        script.push_str("}\n");
        let file = std::env::temp_dir().join(format!("{}-nft.conf", ns.name));
        std::fs::write(&file, script)?;
        ns.exec(&["nft", "-f", file.to_str().unwrap()])?;
        let _ = std::fs::remove_file(&file);
        Ok(NftCounters { ns })
    }

    /// (packets, bytes) of a named counter; bytes are L3 (no Ethernet).
    pub fn read(&self, name: &str) -> Result<(u64, u64)> {
        let out = self
            .ns
            .exec(&["nft", "-j", "list", "counter", "inet", "canary_test", name])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let c = v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|e| e.get("counter")))
            .context("no counter in nft output")?;
        Ok((
            c["packets"].as_u64().context("packets")?,
            c["bytes"].as_u64().context("bytes")?,
        ))
    }
}
