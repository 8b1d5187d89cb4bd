//! What a refused change must leave as it was, read from the pinned maps:
//! the service entries, VIPs, reverse NAT, overrides, the backends of the
//! first services, the first Maglev slots and the redirect ports. Tests
//! take one before a bad request and compare after it.

use canary_userspace::dataplane::maps::Maps;

#[derive(Debug, PartialEq)]
pub struct MapsSnapshot {
    services: Vec<canary_common::ServiceState>,
    vips: Vec<([u32; 4], u16, u8, u32)>,
    reverse_nat: Vec<([u32; 4], u16, u32, u32)>,
    overrides: usize,
    backends: Vec<Vec<(u32, [u32; 4], u32)>>,
    maglev: Vec<u32>,
    tx_ports: Vec<u32>,
}

impl MapsSnapshot {
    /// The maps now; `services` is how many service ids' backends to keep.
    pub fn take(m: &Maps, services: u32) -> MapsSnapshot {
        let mut vips: Vec<_> = m
            .vips
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.addr, k.port, k.proto, v.service_id))
            .collect();
        vips.sort();
        let mut reverse_nat: Vec<_> = m
            .reverse_nat
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.addr, k.port, v.backend_id, v.version))
            .collect();
        reverse_nat.sort();
        let mut tx_ports: Vec<u32> = m.tx_ports.keys().map(|k| k.unwrap()).collect();
        tx_ports.sort();
        MapsSnapshot {
            services: (0..4).map(|i| m.services.get(&i, 0).unwrap()).collect(),
            vips,
            reverse_nat,
            overrides: m.overrides.iter().count(),
            backends: (0..services)
                .map(|sid| {
                    m.backends_of(sid)
                        .into_iter()
                        .map(|(i, b)| (i, b.addr, b.version))
                        .collect()
                })
                .collect(),
            maglev: (0..64).map(|i| m.maglev.get(&i, 0).unwrap()).collect(),
            tx_ports,
        }
    }
}
