//! The target policy: which addresses Herald may deliver to. By default only public ones:
//! loopback, private, link-local, shared (CGNAT), documentation, benchmarking, multicast,
//! reserved and unspecified addresses are refused, whether they are written in the URL or
//! come out of DNS (the check runs on the resolved address, inside the HTTP client's
//! resolver, so a hostname cannot smuggle one in).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which non-public addresses are allowed anyway.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// Allow every address (development, tests, the sandbox demo).
    pub allow_private: bool,
    /// Non-public ranges allowed even when `allow_private` is off.
    pub allow: Vec<IpNet>,
}

/// The error a refused target produces; the engine finds it in the error chain and records
/// the attempt with error class `blocked-target`.
#[derive(Debug, thiserror::Error)]
#[error("refusing to deliver to non-public address {0} (start Herald with --allow-private-targets or an allow-list to permit it)")]
pub struct BlockedTarget(pub IpAddr);

impl TargetPolicy {
    /// True when delivering to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// True for globally routable unicast addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed internally)
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to an embedded IPv4 address
        || (s[0] == 0x2002 && !is_public_v4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8))) // 6to4 of a non-public IPv4
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: would reach IPv4 space unchecked
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
    // v4-compatible
}

/// A DNS resolver for the HTTP client that drops refused addresses and fails when none is
/// left.
#[derive(Clone)]
pub(crate) struct CheckedResolver {
    pub policy: Arc<TargetPolicy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                if let Some(first) = addrs.first() {
                    return Err(Box::new(BlockedTarget(first.ip()))
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused_by_default() {
        let p = TargetPolicy::default();
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "fec0::1",
            "2001:0:4136:e378::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "192.88.99.1",
        ] {
            assert!(!p.permits(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        let p = TargetPolicy::default();
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.permits(ip(s)), "{s} must be permitted");
        }
    }

    #[test]
    fn allow_private_and_allow_list_lift_the_refusal() {
        assert!(TargetPolicy {
            allow_private: true,
            allow: vec![]
        }
        .permits(ip("127.0.0.1")));
        let p = TargetPolicy {
            allow_private: false,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(p.permits(ip("10.9.9.9")));
        assert!(!p.permits(ip("192.168.0.1")));
    }
}
