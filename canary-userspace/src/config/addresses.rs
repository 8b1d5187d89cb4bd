//! Which addresses can be a backend. canary rewrites a client's packet
//! toward the backend and routes it out of an interface; an address that is
//! not one other host's, reachable by a route, only makes the clients hashed
//! to it time out (counted as nothing worse than `pass_to_stack`). So these
//! are refused wherever a backend enters: the config file at start and at a
//! reload, `canaryctl backends add`, a fleet's pools.
//!
//! The rules on the address alone and against the VIPs are pure and run in
//! `Config::validate`; the one against this host's own addresses needs the
//! environment and runs where a backend enters from this host: the file at
//! start and at a reload, and `backends add` (not in every apply, so an
//! address turning up here at run time blocks no later change; nor for a
//! fleet's pools, the same on every host).

use super::{Config, Version};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A rule an address breaks that keeps it from being a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRule {
    /// 0.0.0.0, ::
    Unspecified,
    /// 0.0.0.0/8: "this network", never a destination.
    ThisNetwork,
    /// 127.0.0.0/8, ::1
    Loopback,
    /// 255.255.255.255
    Broadcast,
    /// 240.0.0.0/4 (but the broadcast address): reserved, not routed.
    Reserved,
    /// 169.254.0.0/16, fe80::/10
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8
    Multicast,
    /// ::ffff:0:0/96
    V4Mapped,
    /// Not of the family of the service's VIP (given).
    OtherFamily(IpAddr),
    /// The VIP of a service (any port and protocol).
    Vip(String),
    /// An address of this host, on this interface.
    ThisHost(String),
}

impl BackendRule {
    /// The rule `addr` breaks on its own, if any (the first that applies).
    pub fn of(addr: IpAddr) -> Option<BackendRule> {
        match addr {
            IpAddr::V4(a) => of_v4(a),
            IpAddr::V6(a) => of_v6(a),
        }
    }

    /// The rule `addr` breaks as a backend of a service at `vip`, if any
    /// (the first that applies): the VIP's family, the address on its own,
    /// another service's VIP (`vip_owner` names the service a VIP is of).
    pub fn of_backend(
        addr: IpAddr,
        vip: IpAddr,
        vip_owner: impl Fn(IpAddr) -> Option<String>,
    ) -> Option<BackendRule> {
        if addr.is_ipv4() != vip.is_ipv4() {
            return Some(BackendRule::OtherFamily(vip));
        }
        BackendRule::of(addr).or_else(|| vip_owner(addr).map(BackendRule::Vip))
    }

    /// What the address is: `ADDR is ...` (a VIP's error says this alone).
    pub fn fact(&self) -> String {
        match self {
            BackendRule::Unspecified => "the unspecified address".into(),
            BackendRule::ThisNetwork => {
                "in 0.0.0.0/8 (\"this network\"), never a destination".into()
            }
            BackendRule::Loopback => "a loopback address".into(),
            BackendRule::Broadcast => "the broadcast address".into(),
            BackendRule::Reserved => "in 240.0.0.0/4, reserved and not routed".into(),
            BackendRule::LinkLocal => {
                "a link-local address, valid on one link only and never routed".into()
            }
            BackendRule::Multicast => "a multicast address".into(),
            BackendRule::V4Mapped => "an IPv4-mapped IPv6 address".into(),
            BackendRule::OtherFamily(vip) => {
                format!("not the same address family as the VIP {vip}")
            }
            BackendRule::Vip(service) => format!("the VIP of service {service}"),
            BackendRule::ThisHost(iface) => format!("an address of this host (interface {iface})"),
        }
    }

    /// Why that keeps it from being a backend, if the fact does not say.
    fn reason(&self) -> Option<&'static str> {
        const ANOTHER: &str = "a backend must be another host";
        const ONE: &str = "a backend must be one host";
        const ROUTED: &str = "a backend must have an address canary can route to";
        match self {
            BackendRule::Unspecified | BackendRule::Broadcast | BackendRule::Multicast => Some(ONE),
            BackendRule::ThisNetwork | BackendRule::Reserved | BackendRule::LinkLocal => {
                Some(ROUTED)
            }
            BackendRule::Loopback | BackendRule::Vip(_) | BackendRule::ThisHost(_) => Some(ANOTHER),
            BackendRule::V4Mapped => Some(
                "a backend of an IPv6 service needs a native IPv6 address \
                 (an IPv4 backend belongs to an IPv4 service)",
            ),
            BackendRule::OtherFamily(_) => None,
        }
    }

    /// What the rule says: the end of `FIELD: ADDR is ...`.
    pub fn says(&self) -> String {
        match self.reason() {
            Some(why) => format!("{}; {why}", self.fact()),
            None => self.fact(),
        }
    }

    /// The whole error line: `services[0] (shop).canary[1]: 127.0.0.1 is a
    /// loopback address; a backend must be another host`.
    pub fn error(&self, field: &str, addr: IpAddr) -> String {
        format!("{field}: {addr} is {}", self.says())
    }
}

fn of_v4(a: Ipv4Addr) -> Option<BackendRule> {
    let first = a.octets()[0];
    Some(if a.is_unspecified() {
        BackendRule::Unspecified
    } else if first == 0 {
        BackendRule::ThisNetwork
    } else if a.is_loopback() {
        BackendRule::Loopback
    } else if a.is_broadcast() {
        BackendRule::Broadcast
    } else if first >= 240 {
        BackendRule::Reserved
    } else if a.is_link_local() {
        BackendRule::LinkLocal
    } else if a.is_multicast() {
        BackendRule::Multicast
    } else {
        return None;
    })
}

fn of_v6(a: Ipv6Addr) -> Option<BackendRule> {
    Some(if a.is_unspecified() {
        BackendRule::Unspecified
    } else if a.is_loopback() {
        BackendRule::Loopback
    } else if a.is_unicast_link_local() {
        BackendRule::LinkLocal
    } else if a.is_multicast() {
        BackendRule::Multicast
    } else if a.to_ipv4_mapped().is_some() {
        BackendRule::V4Mapped
    } else {
        return None;
    })
}

/// The rule a backend breaks against this host's addresses, given as
/// (address, interface) pairs (`dataplane::host_addresses`).
fn backend_on_host(addr: IpAddr, host: &[(IpAddr, String)]) -> Option<BackendRule> {
    host.iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, iface)| BackendRule::ThisHost(iface.clone()))
}

impl Config {
    /// The rule `addr` would break as a new backend of this config, if any:
    /// on its own, as a service's VIP, as one of this host's addresses
    /// (`host`). (`validate` checks a whole config's pools the same way.)
    pub fn backend_rule(
        &self,
        addr: IpAddr,
        vip: IpAddr,
        host: &[(IpAddr, String)],
    ) -> Option<BackendRule> {
        BackendRule::of_backend(addr, vip, |a| {
            self.services
                .iter()
                .find(|s| s.vip == a)
                .map(|s| s.name.clone())
        })
        .or_else(|| backend_on_host(addr, host))
    }

    /// Refuses a backend that is one of this host's addresses, given as
    /// (address, interface) pairs; the error names the field and the rule.
    pub fn check_backends_not_on_host(&self, host: &[(IpAddr, String)]) -> anyhow::Result<()> {
        for i in 0..self.services.len() {
            self.check_service_not_on_host(i, host)?;
        }
        Ok(())
    }

    /// The same for the pools of service `i` only.
    pub fn check_service_not_on_host(
        &self,
        i: usize,
        host: &[(IpAddr, String)],
    ) -> anyhow::Result<()> {
        let s = &self.services[i];
        for v in [Version::Stable, Version::Canary] {
            for (j, b) in s.pool(v).iter().enumerate() {
                if let Some(rule) = backend_on_host(*b, host) {
                    let field = format!("services[{i}] ({}).{}[{j}]", s.name, v.name());
                    anyhow::bail!("{}", rule.error(&field, *b));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(a: &str) -> Option<BackendRule> {
        BackendRule::of(a.parse().unwrap())
    }

    #[test]
    fn every_rule_v4() {
        use BackendRule::*;
        for (a, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("0.255.255.255", ThisNetwork),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("250.1.2.3", Reserved),
            ("255.255.255.254", Reserved),
            ("169.254.1.1", LinkLocal),
            ("169.254.0.0", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.255", Multicast),
        ] {
            assert_eq!(rule(a), Some(want.clone()), "{a}");
        }
        for a in [
            "198.18.1.2",
            "198.19.255.255",
            "1.0.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "223.255.255.255",
        ] {
            assert_eq!(rule(a), None, "{a}");
        }
    }

    #[test]
    fn every_rule_v6() {
        use BackendRule::*;
        for (a, want) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("::ffff:198.18.1.2", V4Mapped),
            ("::ffff:127.0.0.1", V4Mapped),
        ] {
            assert_eq!(rule(a), Some(want.clone()), "{a}");
        }
        for a in ["2001:db8:1::2", "fd00::1", "fec0::1", "fe7f::1", "::2"] {
            assert_eq!(rule(a), None, "{a}");
        }
    }

    #[test]
    fn the_message_names_the_field_and_the_rule() {
        let at = "services[0] (shop).canary[1]";
        let e = |a: &str| {
            let addr: IpAddr = a.parse().unwrap();
            BackendRule::of(addr).unwrap().error(at, addr)
        };
        assert_eq!(
            e("127.0.0.1"),
            "services[0] (shop).canary[1]: 127.0.0.1 is a loopback address; \
             a backend must be another host"
        );
        assert_eq!(
            e("::1"),
            "services[0] (shop).canary[1]: ::1 is a loopback address; \
             a backend must be another host"
        );
        for (a, says) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("0.0.0.9", "0.0.0.0/8"),
            ("255.255.255.255", "the broadcast address"),
            ("241.0.0.1", "240.0.0.0/4, reserved"),
            ("169.254.1.1", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("224.0.0.5", "a multicast address"),
            ("ff02::2", "a multicast address"),
            ("::ffff:198.18.0.1", "an IPv4-mapped IPv6 address"),
        ] {
            let got = e(a);
            assert!(got.starts_with(&format!("{at}: {a} is ")), "{got}");
            assert!(got.contains(says), "{a}: {got}");
        }
        let vip = BackendRule::Vip("cart".into()).error(at, "198.18.100.2".parse().unwrap());
        assert_eq!(
            vip,
            "services[0] (shop).canary[1]: 198.18.100.2 is the VIP of service cart; \
             a backend must be another host"
        );
    }

    #[test]
    fn this_hosts_addresses_name_their_interface() {
        let host: Vec<(IpAddr, String)> = vec![
            ("198.18.0.1".parse().unwrap(), "lb-client".into()),
            ("2001:db8:1::1".parse().unwrap(), "lb-b1".into()),
        ];
        assert_eq!(backend_on_host("198.18.0.2".parse().unwrap(), &host), None);
        let r = backend_on_host("2001:db8:1::1".parse().unwrap(), &host).unwrap();
        assert_eq!(r, BackendRule::ThisHost("lb-b1".into()));
        assert_eq!(
            r.error(
                "services[1] (api).stable[0]",
                "2001:db8:1::1".parse().unwrap()
            ),
            "services[1] (api).stable[0]: 2001:db8:1::1 is an address of this host \
             (interface lb-b1); a backend must be another host"
        );
    }
}
