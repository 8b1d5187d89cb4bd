//! `apply`: a validated `Config` becomes map contents, make-before-break:
//! backends, reverse NAT and Maglev tables first, the service entry (weight,
//! live generation) next, the VIP last, and removals in the opposite order.
//! Everything that can be checked without writing is checked first.

use super::*;

/// What one `apply` changed, for the log.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub lines: Vec<String>,
}

/// One service as `apply` will write it: its config, its id, its backends
/// as (pool, address, backend id), and how many of those lead the list as
/// pool members (the draining ones follow: no Maglev slot).
type PlannedService<'a> = (&'a ServiceConfig, u32, Vec<(Version, IpAddr, u32)>, usize);

/// Everything `apply` decided before its first write.
struct Plan<'a> {
    ifindexes: BTreeMap<String, u32>,
    /// The interfaces to attach to that this data plane is not attached to
    /// yet.
    unattached: Vec<String>,
    /// This host's addresses (`LOCAL_ADDRS`), from the listing the
    /// interfaces were checked against.
    local_addrs: Vec<IpAddr>,
    ids: Ids,
    /// Service slots the kernel has active now.
    active_slots: HashSet<u32>,
    services: Vec<PlannedService<'a>>,
    planned_sids: HashSet<u32>,
    /// Ids handed out afresh: their counters start from zero.
    fresh_services: Vec<u32>,
    fresh_backends: Vec<u32>,
    want_vips: HashMap<VipKey, VipInfo>,
    want_rev: HashMap<BackendAddrKey, ReverseNat>,
    want_overrides: HashSet<(u32, canary_common::OverrideKeyData)>,
}

impl DataPlane {
    /// Makes the maps and attachments match `config`: a reconciliation of
    /// what the maps hold against what the config wants, so it is the same
    /// code for the first apply, a reload, and a restarted daemon adopting
    /// pinned maps. Everything that can be checked without writing is checked
    /// first, so a config that cannot be applied changes nothing.
    pub fn apply(&mut self, config: &Config) -> Result<ApplyReport> {
        let plan = self.plan(config)?;
        self.write(config, plan)
    }

    /// The first half of `apply`, without a single write: the config checked
    /// against what cannot change at run time, ids for every service and
    /// backend, and the desired contents of the keyed maps.
    fn plan<'a>(&self, config: &'a Config) -> Result<Plan<'a>> {
        config.validate()?;
        let mut ifindexes = BTreeMap::new();
        for iface in config.interfaces() {
            ifindexes.insert(iface.clone(), ifindex(&iface)?);
        }
        // In name order, as `attach_interfaces` attaches them.
        let unattached = self.unattached(ifindexes.keys());
        // This host's interfaces, listed once per apply: the rules of the
        // interfaces to attach to, and `LOCAL_ADDRS`. (No backend at one of
        // this host's addresses is checked where a backend enters: the
        // file at start and reload, `backends add`. Not here: an address
        // added to this host later must not block every later change, a
        // rollback included, and a fleet's pool is the same on every host.)
        let host = InterfaceState::read_all()?;
        self.check_interfaces(config, &unattached, &host)?;
        if let Some(prev) = &self.applied {
            if prev.flow_table_entries() != config.flow_table_entries() {
                bail!("flow_table.size: changing the flow table size needs a restart of canaryd");
            }
            if prev.limits.services != config.limits.services {
                bail!("limits.services: changing the service limit needs a restart of canaryd");
            }
        }
        if config.services.len() > self.options.services as usize {
            bail!(
                "limits.services: {} services, but this data plane was loaded for {} \
                 (changing limits.services needs a restart of canaryd)",
                config.services.len(),
                self.options.services
            );
        }

        // Ids: kept for known services and backends, fresh ones for new.
        let mut ids = if self.adopted && self.applied.is_none() {
            Ids::adopt(&self.maps, config)
        } else {
            self.ids.clone()
        };
        let active_slots: HashSet<u32> = (0..MAX_SERVICES)
            .filter(|i| {
                self.maps
                    .services
                    .get(i, 0)
                    .map(|s| s.active != 0)
                    .unwrap_or(false)
            })
            .collect();
        let mut plan = Vec::new();
        let mut fresh_services = Vec::new();
        let mut fresh_backends = Vec::new();
        for s in &config.services {
            let known = ids.services.contains_key(&s.name);
            let sid = ids.service(&s.name, &active_slots, self.options.services)?;
            if !known {
                fresh_services.push(sid);
            }
            let mut members = Vec::new();
            for v in [Version::Stable, Version::Canary] {
                for b in s.pool(v) {
                    let known = ids.backends.contains_key(&(sid, *b));
                    let bid = ids.backend(sid, *b)?;
                    if !known {
                        fresh_backends.push(bid);
                    }
                    members.push((v, *b, bid));
                }
            }
            let pooled = members.len();
            // Draining backends (`rollout finish`): their id, BACKENDS and
            // REVERSE_NAT entries stay for their open flows (no Maglev slot:
            // the tables below take pool members only). Only one with an id:
            // none else has flows.
            for b in s.draining.iter() {
                if s.stable.contains(b) || s.canary.contains(b) {
                    continue;
                }
                if let Some(&bid) = ids.backends.get(&(sid, *b)) {
                    members.push((Version::Stable, *b, bid));
                }
            }
            plan.push((s, sid, members, pooled));
        }
        let planned_sids: HashSet<u32> = plan.iter().map(|(_, sid, _, _)| *sid).collect();

        // The desired contents of the keyed maps.
        let mut want_vips: HashMap<VipKey, VipInfo> = HashMap::new();
        let mut want_rev: HashMap<BackendAddrKey, ReverseNat> = HashMap::new();
        let mut want_overrides = HashSet::new();
        for (s, sid, members, _) in &plan {
            let info = VipInfo {
                service_id: *sid,
                affinity: affinity_flag(s.affinity),
            };
            want_vips.insert(vip_key(s), info);
            want_vips.insert(vip_marker(s.vip), info);
            for (v, b, bid) in members {
                want_rev.insert(
                    backend_addr_key(s, *b),
                    ReverseNat {
                        vip: to_words(s.vip),
                        service_id: *sid,
                        backend_id: *bid,
                        version: v.index(),
                        _pad: 0,
                    },
                );
            }
            // Plain overrides and cohort sources (one LPM map).
            for (net, _) in s.lpm_entries() {
                want_overrides.insert(override_key(*sid, net.addr(), net.prefix_len()));
            }
        }

        Ok(Plan {
            ifindexes,
            unattached,
            local_addrs: addresses_of(&host),
            ids,
            active_slots,
            services: plan,
            planned_sids,
            fresh_services,
            fresh_backends,
            want_vips,
            want_rev,
            want_overrides,
        })
    }

    /// The second half of `apply`: the writes, make-before-break, and the
    /// Maglev tables built against the live ones (fewest slots moved).
    fn write(&mut self, config: &Config, plan: Plan<'_>) -> Result<ApplyReport> {
        let Plan {
            ifindexes,
            unattached,
            local_addrs,
            mut ids,
            active_slots,
            services: plan,
            planned_sids,
            fresh_services,
            fresh_backends,
            want_vips,
            want_rev,
            want_overrides,
        } = plan;
        let prev = self.applied.clone();
        let prev_service = |name: &str| {
            prev.as_ref()
                .and_then(|c| c.services.iter().find(|s| s.name == name))
                .cloned()
        };

        let mut report = ApplyReport::default();

        // 1. VIPs nobody wants any more go first, so no new packet reaches a
        //    service while it is being dismantled.
        let stale_vips: Vec<VipKey> = self
            .maps
            .vips
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_vips.contains_key(k))
            .collect();
        for k in &stale_vips {
            let _ = self.maps.vips.remove(k);
        }

        // 2. Counters of ids handed out afresh start from zero.
        for sid in &fresh_services {
            for v in 0..canary_common::NUM_VERSIONS {
                self.zero_version_stats(*sid, v)?;
            }
        }
        for bid in &fresh_backends {
            self.zero_backend_stats(*bid)?;
        }

        // 3. Every configured service: backends, reverse NAT, Maglev tables,
        //    overrides, the service entry, and its VIP last.
        for (s, sid, members, pooled) in &plan {
            let old = prev_service(&s.name);
            for (v, b, bid) in members {
                self.maps.backends.set(
                    *bid,
                    BackendInfo {
                        addr: to_words(*b),
                        family: family(*b) as u32,
                        service_id: *sid,
                        version: v.index(),
                        _pad: 0,
                    },
                    0,
                )?;
                self.maps.reverse_nat.insert(
                    backend_addr_key(s, *b),
                    want_rev[&backend_addr_key(s, *b)],
                    0,
                )?;
            }
            let mut state = self.maps.services.get(sid, 0).unwrap_or_default();
            for v in [Version::Stable, Version::Canary] {
                // Pool members only: a draining backend never gets a slot,
                // not even failing open.
                let all: Vec<(IpAddr, u32)> = members[..*pooled]
                    .iter()
                    .filter(|(mv, _, _)| *mv == v)
                    .map(|(_, b, id)| (*b, *id))
                    .collect();
                let healthy: Vec<(IpAddr, u32)> = all
                    .iter()
                    .filter(|(b, _)| !self.unhealthy.contains(&(s.name.clone(), *b)))
                    .copied()
                    .collect();
                let pool = if healthy.is_empty() { all } else { healthy };
                let table = maglev::build_table(&pool, MAGLEV_TABLE_SIZE);
                let vi = v.index();
                let live_gen = state.live_gen[vi as usize] & 1;
                let live = match self.maglev_live.remove(&(*sid, vi)) {
                    Some(cached) => Some(cached),
                    // Adopted maps: read what the kernel is using now.
                    None if state.active != 0 => {
                        Some((live_gen, self.read_maglev(*sid, vi, live_gen)?))
                    }
                    None => None,
                };
                let generation = match live {
                    Some((g, t)) if t == table => g,
                    Some((g, t)) => {
                        let next = 1 - g;
                        self.write_maglev(*sid, vi, next, &table)?;
                        report.lines.push(format!(
                            "service {}: {} pool now {} backends ({}), {:.1}% of Maglev slots moved",
                            s.name,
                            v.name(),
                            pool.len(),
                            pool.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(", "),
                            maglev::moved_fraction(&t, &table) * 100.0
                        ));
                        next
                    }
                    None => {
                        self.write_maglev(*sid, vi, 0, &table)?;
                        0
                    }
                };
                state.live_gen[vi as usize] = generation;
                state.pool_size[vi as usize] = pool.len() as u32;
                self.maglev_live.insert((*sid, vi), (generation, table));
            }
            // Before the service entry: the cohort weights and the live
            // bit switch together in its one write. (A canary override with
            // no canary pool, a finished release, is written as stable until
            // a canary is added: `lpm_entries`.)
            for (net, version) in s.lpm_entries() {
                let (bits, data) = override_key(*sid, net.addr(), net.prefix_len());
                self.maps.overrides.insert(
                    &LpmKey::new(bits, data),
                    OverrideValue { version },
                    0,
                )?;
            }
            let old_weight = if state.active != 0 {
                Some(state.weight_bp)
            } else {
                None
            };
            state.weight_bp = s.weight_bp();
            state.seed = s.seed();
            state.active = 1;
            state.has_overrides = s.override_flags();
            // One write: weight, seed and the live generations switch together.
            self.maps.services.set(*sid, state, 0)?;
            match (old_weight, &old) {
                (Some(w), _) if w != state.weight_bp => report.lines.push(format!(
                    "service {}: canary weight {} -> {} (config)",
                    s.name,
                    WeightBp::from_bp(w),
                    s.weight()
                )),
                (None, _) | (_, None) => report.lines.push(format!(
                    "service {} (id {sid}): {}:{} {:?}, canary weight {}, {} stable + {} canary backends",
                    s.name,
                    s.vip,
                    s.port,
                    s.protocol,
                    s.weight(),
                    s.stable.len(),
                    s.canary.len()
                )),
                _ => {}
            }
            self.maps
                .vips
                .insert(vip_marker(s.vip), want_vips[&vip_marker(s.vip)], 0)?;
            self.maps
                .vips
                .insert(vip_key(s), want_vips[&vip_key(s)], 0)?;
        }

        // 4. Leftovers: reverse NAT and overrides nobody wants, service slots
        //    no longer configured.
        let stale_rev: Vec<BackendAddrKey> = self
            .maps
            .reverse_nat
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_rev.contains_key(k))
            .collect();
        for k in stale_rev {
            let _ = self.maps.reverse_nat.remove(&k);
        }
        let stale_overrides: Vec<LpmKey<canary_common::OverrideKeyData>> = self
            .maps
            .overrides
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want_overrides.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale_overrides {
            let _ = self.maps.overrides.remove(&k);
        }
        for sid in active_slots.difference(&planned_sids) {
            self.maps.services.set(*sid, ServiceState::default(), 0)?;
            self.maglev_live.remove(&(*sid, 0));
            self.maglev_live.remove(&(*sid, 1));
            let name = self
                .ids
                .services
                .iter()
                .find(|(_, id)| *id == sid)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("id {sid}"));
            report.lines.push(format!("service {name}: removed"));
        }

        // 5. Settings (timeouts, flood threshold; written whole) and this
        //    host's addresses, then interfaces: redirect ports, then
        //    attachments.
        let settings = Settings {
            nexthop_gen: 0,
            flood_new_flows_per_s: config.flow_table.syn_flood_threshold,
            timeouts: config.flow_table.timeouts.to_map(),
        };
        self.maps
            .write_settings(settings)
            .context("writing SETTINGS")?;
        self.maps
            .set_judged_per_client(config.judging.per_client_per_second)
            .context("writing JUDGE")?;
        if let Some(p) = prev.as_ref().filter(|p| p.flow_table != config.flow_table) {
            let ft = &config.flow_table;
            let (t, was) = (&ft.timeouts, &p.flow_table.timeouts);
            let d = humantime::format_duration;
            report.lines.push(format!(
                "flow table: idle timeouts tcp established {} (was {}), handshake {} (was {}), \
                 closing {} (was {}), udp {} (was {}), udp replied {} (was {}); \
                 flood mode above {} new flows/s (was {}); swept every {} (was {})",
                d(t.tcp_established),
                d(was.tcp_established),
                d(t.tcp_handshake),
                d(was.tcp_handshake),
                d(t.tcp_closing),
                d(was.tcp_closing),
                d(t.udp),
                d(was.udp),
                d(t.udp_replied),
                d(was.udp_replied),
                ft.syn_flood_threshold,
                p.flow_table.syn_flood_threshold,
                d(ft.sweep_interval),
                d(p.flow_table.sweep_interval),
            ));
        }
        self.set_local_addrs(&local_addrs)
            .context("filling LOCAL_ADDRS")?;
        let wanted: HashSet<u32> = ifindexes.values().copied().collect();
        for idx in ifindexes.values() {
            self.maps.tx_ports.insert(*idx, *idx, None, 0)?;
        }
        let stale_ports: Vec<u32> = self
            .maps
            .tx_ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        let ports_dropped = !stale_ports.is_empty();
        for k in stale_ports {
            let _ = self.maps.tx_ports.remove(k);
        }
        // A next hop cached toward a port just removed would fail its
        // redirect (drop_unroutable) until the bump at the end: bump now.
        if ports_dropped {
            if let Err(e) = self.maps.bump_nexthop_gen() {
                warn!("invalidating cached next hops: {e:#}");
            }
        }
        self.attach_migrating(&ifindexes, &unattached, config, &ids, &mut report)?;
        self.check_veths(&unattached, config, prev.as_ref());

        let keep_services: HashSet<String> =
            config.services.iter().map(|s| s.name.clone()).collect();
        let keep_backends: HashSet<(u32, IpAddr)> = plan
            .iter()
            .flat_map(|(_, sid, m, _)| m.iter().map(move |(_, b, _)| (*sid, *b)))
            .collect();
        ids.retain(&keep_services, &keep_backends);
        self.ids = ids;
        self.applied = Some(config.clone());
        // Interfaces or backends may have changed: no cached next hop is
        // trusted past this point. (A failed bump only delays that by the
        // kernel's own one-second ageing; the config is applied either way.)
        if let Err(e) = self.maps.bump_nexthop_gen() {
            warn!("invalidating cached next hops: {e:#}");
        }
        Ok(report)
    }

    pub(super) fn read_maglev(&self, sid: u32, version: u32, generation: u32) -> Result<Vec<u32>> {
        let base = maglev_base(sid, version, generation);
        self.maps.maglev_mem.read(base, MAGLEV_TABLE_SIZE as usize)
    }

    /// Per-version counters and health signals of a fresh (possibly reused)
    /// service id start from zero.
    pub(super) fn zero_version_stats(&mut self, sid: u32, version: u32) -> Result<()> {
        let index = canary_common::version_stats_index(sid, version);
        maps::zero_per_cpu(&mut self.maps.version_stats, index)?;
        maps::zero_per_cpu(&mut self.maps.health_stats, index)?;
        maps::zero_per_cpu(&mut self.maps.signals, index)
    }

    pub(super) fn zero_backend_stats(&mut self, bid: u32) -> Result<()> {
        maps::zero_per_cpu(&mut self.maps.backend_stats, bid)
    }

    pub(super) fn write_maglev(
        &mut self,
        sid: u32,
        version: u32,
        generation: u32,
        table: &[u32],
    ) -> Result<()> {
        let base = maglev_base(sid, version, generation);
        self.maps.maglev_mem.write(base, table)
    }
}
