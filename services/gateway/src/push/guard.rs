//! Where push agents may send: a push URL makes legato send requests (and
//! possibly tokens) where its registrant says, so every URL is held to the
//! operators' allow-list of hosts, plain HTTP goes only to loopback (or
//! where a setting allows it), and some addresses are refused whatever the
//! list says: link-local ones (169.254.0.0/16, fe80::/10, where cloud
//! metadata and instance identity endpoints live), Azure's host endpoint
//! (168.63.129.16), the unspecified address, and this process's own
//! managed-identity endpoint (its host, however loopback is spelled, and
//! port). The address check runs again on
//! every connection, after name resolution, so a name that later resolves
//! to a refused address is refused then.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::PushSettings;

/// Azure's host endpoint (wire server): never an agent.
const AZURE_HOST_ENDPOINT: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// Whether legato refuses to connect to `ip` whatever the settings say.
pub(crate) fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified() || v4 == AZURE_HOST_ENDPOINT,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Where the managed-identity endpoint this process would ask for tokens
/// is (`IDENTITY_ENDPOINT`, `MSI_ENDPOINT`; host and port): a push there
/// could carry a token request of the registrant's making.
fn identity_origins() -> Vec<(String, Option<u16>)> {
    ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter_map(|u| Url::parse(&u).ok())
        .filter_map(|u| {
            let host = u.host_str()?.to_ascii_lowercase();
            Some((bare(&host).to_owned(), u.port_or_known_default()))
        })
        .collect()
}

fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `host` names the same machine as `other` in the ways a
/// registrant could spell loopback.
fn same_host(host: &str, other: &str) -> bool {
    let loopback =
        |h: &str| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    host == other || (loopback(host) && loopback(other))
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// `raw` as a URL legato may push to, or why not (for a 400 naming the
/// field).
pub(crate) fn check_url(raw: &str, settings: &PushSettings) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    let host = url.host().ok_or("names no host")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use auth".into());
    }
    let ip = match &host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    };
    if ip.is_some_and(forbidden) {
        return Err("points at a link-local or metadata address, which is never allowed".into());
    }
    let name = host.to_string().to_ascii_lowercase();
    let bare = bare(&name);
    let port = url.port_or_known_default();
    if identity_origins()
        .iter()
        .any(|(h, p)| same_host(bare, h) && *p == port)
    {
        return Err("points at the managed identity endpoint, which is never allowed".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) || settings.allow_http => {}
        "http" => {
            return Err(
                "must be https (plain http only to loopback, or with gateway.push.allow_http)"
                    .into(),
            );
        }
        other => return Err(format!("must be https, not {other}")),
    }
    if !settings
        .allowed_hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(bare))
    {
        return Err(format!("host {bare} is not in gateway.push.allowed_hosts"));
    }
    Ok(url)
}

/// Resolves names as the system does, then drops every address legato
/// refuses; a name left with none fails to connect.
#[derive(Debug, Default)]
pub(crate) struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| !forbidden(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no address legato may push to").into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The client pushes go through: guarded resolution, no redirects (a
/// redirect is answered by the deliverer, through the same checks).
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> PushSettings {
        PushSettings {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..PushSettings::default()
        }
    }

    #[test]
    fn urls_are_held_to_the_allow_list_and_the_refused_addresses() {
        let s = settings(&[
            "agents.example.com",
            "127.0.0.1",
            "169.254.169.254",
            "localhost",
        ]);
        assert!(check_url("https://agents.example.com/review", &s).is_ok());
        assert!(check_url("https://AGENTS.example.com:8443/review", &s).is_ok());
        assert!(
            check_url("http://127.0.0.1:9000/review", &s).is_ok(),
            "loopback over http"
        );
        assert!(check_url("http://localhost:9000/review", &s).is_ok());
        for (url, why) in [
            ("http://agents.example.com/review", "must be https"),
            (
                "https://other.example.com/",
                "not in gateway.push.allowed_hosts",
            ),
            ("https://169.254.169.254/metadata", "link-local"),
            ("http://169.254.169.254/metadata", "link-local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:169.254.169.254]/", "link-local"),
            ("https://168.63.129.16/", "link-local"),
            ("https://user:pw@agents.example.com/", "credentials"),
            ("ftp://agents.example.com/", "must be https"),
            ("not a url", "is not a URL"),
        ] {
            let refused = check_url(url, &s).expect_err(url);
            assert!(refused.contains(why), "{url}: {refused}");
        }
        let open = PushSettings {
            allow_http: true,
            ..settings(&["agents.example.com"])
        };
        assert!(check_url("http://agents.example.com/", &open).is_ok());
    }

    #[test]
    fn link_local_and_metadata_addresses_are_forbidden() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "168.63.129.16",
            "0.0.0.0",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.4", "::1", "2001:db8::1", "20.50.1.1"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolution_drops_refused_addresses() {
        let resolver = GuardedResolver;
        let name: Name = "localhost".parse().unwrap();
        let found: Vec<SocketAddr> = resolver.resolve(name).await.unwrap().collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}
