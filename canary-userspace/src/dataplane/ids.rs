//! Stable ids: a service keeps its id across reloads (flows and counters are
//! keyed by it), a backend keeps its id while it stays in its service;
//! rebuilt from the maps when an earlier canaryd's pins are adopted.

use super::*;

/// Stable ids: a service keeps its id across reloads (flows and counters are
/// keyed by it), a backend keeps its id while it stays in its service.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub services: BTreeMap<String, u32>,
    pub backends: HashMap<(u32, IpAddr), u32>,
    next_backend: u32,
    free_backends: Vec<u32>,
}

impl Ids {
    /// The id of service `name`; a new one, below `limit` (the services
    /// the Maglev tables are sized for), avoids ids in use and slots the
    /// kernel still has active (adopted, about to be removed).
    pub(super) fn service(
        &mut self,
        name: &str,
        active_slots: &HashSet<u32>,
        limit: u32,
    ) -> Result<u32> {
        if let Some(id) = self.services.get(name) {
            return Ok(*id);
        }
        let used: HashSet<u32> = self.services.values().copied().collect();
        let id = (0..limit.min(MAX_SERVICES))
            .find(|i| !used.contains(i) && !active_slots.contains(i))
            .with_context(|| {
                format!(
                    "no free service id below limits.services ({limit}); services being \
                     removed keep theirs until the reload completes"
                )
            })?;
        self.services.insert(name.to_string(), id);
        Ok(id)
    }

    pub(super) fn backend(&mut self, service_id: u32, addr: IpAddr) -> Result<u32> {
        if let Some(id) = self.backends.get(&(service_id, addr)) {
            return Ok(*id);
        }
        // Fresh ids first: an id released a moment ago may still be named by
        // open flows until they end.
        let id = if self.next_backend < MAX_BACKENDS {
            self.next_backend += 1;
            self.next_backend - 1
        } else if !self.free_backends.is_empty() {
            self.free_backends.remove(0)
        } else {
            bail!("no free backend id");
        };
        self.backends.insert((service_id, addr), id);
        Ok(id)
    }

    /// Ids as a previous canaryd left them in the pinned maps: services by
    /// their VIP, backends by their BACKENDS entry.
    pub(super) fn adopt(maps: &Maps, config: &Config) -> Ids {
        let mut ids = Ids::default();
        for s in &config.services {
            if let Ok(info) = maps.vips.get(&vip_key(s), 0) {
                ids.services.insert(s.name.clone(), info.service_id);
            }
        }
        for (i, b) in maps.backends.iter().enumerate() {
            let Ok(b) = b else { continue };
            if b.family == 0 {
                continue;
            }
            let addr = canary_common::addr::from_words(b.addr, b.family as u8);
            ids.backends.insert((b.service_id, addr), i as u32);
            ids.next_backend = ids.next_backend.max(i as u32 + 1);
        }
        ids
    }

    /// Drops every id not in `keep`, returning the released backend ids.
    pub(super) fn retain(
        &mut self,
        services: &HashSet<String>,
        backends: &HashSet<(u32, IpAddr)>,
    ) -> Vec<u32> {
        self.services.retain(|name, _| services.contains(name));
        let mut released = Vec::new();
        self.backends.retain(|k, id| {
            let keep = backends.contains(k);
            if !keep {
                released.push(*id);
            }
            keep
        });
        self.free_backends.extend(&released);
        released
    }
}
