//! Which hosts may be contacted. Configured registries always; any other host
//! only over HTTPS and only at public addresses, so the server can never be
//! used to reach into the cluster's own network.
//!
//! Decisions are made on the *parsed URL's* host, never on the text a client
//! sent: a URL parser reads `2130706433`, `127.1`, `0x7f.1` and `0177.0.0.1`
//! as `127.0.0.1`, so checking the text would let them through. Names go to
//! [`PublicOnlyResolver`], which filters the addresses actually connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

/// The resolver error for a host with no public address.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses ({addrs}); list it under `registries` to allow it")]
pub struct NonPublicAddress {
    pub host: String,
    pub addrs: String,
}

/// Why a URL may not be contacted for an unconfigured registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("{0} is not an https URL")]
    NotHttps(String),
    #[error("{0} is not a public address")]
    NotPublic(IpAddr),
    #[error("'{0}' is a numeric host spelled unusually (read as {1}); write the address in dotted form")]
    OddSpelling(String, IpAddr),
    #[error("the URL has no host")]
    NoHost,
}

/// Checks a URL an unconfigured registry would be contacted at (its endpoint,
/// a redirect, a token realm): HTTPS, and an IP literal must be public. DNS
/// names are checked again at connect time by [`PublicOnlyResolver`].
pub fn check_public_https(url: &Url) -> Result<(), NotAllowed> {
    if url.scheme() != "https" {
        return Err(NotAllowed::NotHttps(url.scheme().to_owned()));
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(NotAllowed::NoHost),
    };
    if is_public(ip) { Ok(()) } else { Err(NotAllowed::NotPublic(ip)) }
}

/// Checks the host a client named (`ns=`, an in-path host) before anything is
/// built for it: the URL it becomes must pass [`check_public_https`], and a
/// host the URL parser reads as an IPv4 number must have been written as one
/// (`8.8.8.8`, never `0x8080808` or `134744072`).
pub fn check_client_named(hostname: &str, url: &Url) -> Result<(), NotAllowed> {
    if let Some(Host::Ipv4(v4)) = url.host()
        && hostname != v4.to_string()
    {
        return Err(NotAllowed::OddSpelling(hostname.to_owned(), IpAddr::V4(v4)));
    }
    check_public_https(url)
}

/// Whether `ip` is on the public internet: not loopback, private, link-local,
/// shared (CGNAT), documentation, multicast or otherwise reserved. IPv6 forms
/// that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by
/// the address they embed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast, deprecated
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, RFC 6052) or 6to4
/// (`2002:AABB:CCDD::`, RFC 3056) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        // `::` and `::1` are themselves, not embedded IPv4.
        _ if ip.is_unspecified() || ip.is_loopback() => None,
        _ => ip.to_ipv4(),
    }
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 local-use 64:ff9b:1::/48 and the rest
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only, RFC 6666
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID, benchmarking)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000)) // documentation, RFC 9637
}

/// Lookups of client-named hosts at once: each holds a blocking thread, and
/// clients choose how many distinct names they send.
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// A DNS resolver that drops non-public addresses, used for unconfigured
/// hosts. Filtering at resolution (not before it) leaves no window for DNS
/// rebinding between a check and the connect.
#[derive(Debug, Clone, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let _permit = LOOKUPS.acquire().await?;
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let addrs = all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(
                    Box::new(NonPublicAddress { host, addrs }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for ip in
            ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
        {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::",
            "240.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "2002:7f00:1::",
            "2001::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn decides_on_the_parsed_url() {
        let url = |h: &str| Url::parse(&format!("https://{h}:5000/")).unwrap();
        for h in [
            "2130706433",
            "127.1",
            "0x7f.1",
            "0177.0.0.1",
            "0x7f000001",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
        ] {
            assert!(check_client_named(h, &url(h)).is_err(), "{h}");
        }
        assert!(matches!(
            check_client_named("0x8.8.8.8", &url("0x8.8.8.8")),
            Err(NotAllowed::OddSpelling(..))
        ));
        assert_eq!(check_client_named("8.8.8.8", &url("8.8.8.8")), Ok(()));
        assert_eq!(check_client_named("quay.io", &url("quay.io")), Ok(()));
        assert!(check_public_https(&Url::parse("http://quay.io/").unwrap()).is_err());
    }
}
