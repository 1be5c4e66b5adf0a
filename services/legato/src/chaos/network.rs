//! The soak's network (`legato chaos --network`): every service process
//! reaches the broker and the store through fault proxies of its own, so
//! one replica can be cut off from one dependency while the others carry
//! on. Every link has latency with jitter throughout; the faults are
//! partitions and hung links that heal after a while, and connections
//! dropped at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use legato_fault_proxy::{FaultProxy, Link};

/// What a service process reaches over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dependency {
    Broker,
    Store,
}

impl Dependency {
    pub fn name(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Store => "store",
        }
    }
}

/// How the network misbehaves throughout and how long a cut lasts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weather {
    pub latency: Duration,
    pub jitter: Duration,
    pub partition: Duration,
    pub hang: Duration,
}

/// The proxies of every service process, by its slot (`orchestrator-0`,
/// `gateway`, …), on a runtime of their own: the soak's own thread blocks
/// while a service starts, and the proxies must carry its traffic then.
pub(crate) struct Network {
    /// Shut down in the background when the soak ends (a runtime may not
    /// be dropped on the soak's own).
    runtime: Option<tokio::runtime::Runtime>,
    upstreams: BTreeMap<Dependency, SocketAddr>,
    weather: Weather,
    proxies: BTreeMap<(String, Dependency), Arc<Cuttable>>,
}

/// A link and how many times it was cut: a cut heals itself when its time
/// is up unless a later cut of the same link holds on.
struct Cuttable {
    proxy: FaultProxy,
    cuts: AtomicU64,
}

impl Network {
    pub fn new(
        upstreams: BTreeMap<Dependency, SocketAddr>,
        weather: Weather,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-network")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            upstreams,
            weather,
            proxies: BTreeMap::new(),
        })
    }

    /// Where `slot` reaches `dependency`: its own proxy, made on first ask,
    /// with the weather's latency.
    pub fn address(&mut self, slot: &str, dependency: Dependency) -> anyhow::Result<SocketAddr> {
        let key = (slot.to_owned(), dependency);
        if let Some(link) = self.proxies.get(&key) {
            return Ok(link.proxy.addr());
        }
        let upstream = *self
            .upstreams
            .get(&dependency)
            .with_context(|| format!("no {} to proxy", dependency.name()))?;
        let runtime = self.runtime.as_ref().context("the network is shut down")?;
        let proxy = std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(FaultProxy::start(upstream)))
                .join()
        })
        .map_err(|_| anyhow::anyhow!("the proxy's thread panicked"))??;
        proxy.set_latency(self.weather.latency, self.weather.jitter);
        let addr = proxy.addr();
        self.proxies.insert(
            key,
            Arc::new(Cuttable {
                proxy,
                cuts: AtomicU64::new(0),
            }),
        );
        Ok(addr)
    }

    /// Every (slot, dependency) pair with a proxy, in order.
    pub fn links(&self) -> Vec<(String, Dependency)> {
        self.proxies.keys().cloned().collect()
    }

    /// Cuts `slot` off from `dependency` (partitioned, or hung); it heals
    /// on its own once the weather's time for it has passed.
    pub fn cut(&self, slot: &str, dependency: Dependency, link: Link) {
        let (Some(cuttable), Some(runtime)) = (
            self.proxies.get(&(slot.to_owned(), dependency)),
            &self.runtime,
        ) else {
            return;
        };
        let lasts = if link == Link::Hung {
            self.weather.hang
        } else {
            self.weather.partition
        };
        let cut = cuttable.cuts.fetch_add(1, Ordering::SeqCst) + 1;
        cuttable.proxy.set_link(link);
        let cuttable = cuttable.clone();
        runtime.spawn(async move {
            tokio::time::sleep(lasts).await;
            if cuttable.cuts.load(Ordering::SeqCst) == cut {
                cuttable.proxy.set_link(Link::Up);
            }
        });
    }

    /// Closes `slot`'s open connections to `dependency` once.
    pub fn drop_connections(&self, slot: &str, dependency: Dependency) {
        if let Some(cuttable) = self.proxies.get(&(slot.to_owned(), dependency)) {
            cuttable.proxy.drop_connections();
        }
    }

    /// Heals every cut now; the latency stays.
    pub fn heal_all(&self) {
        for cuttable in self.proxies.values() {
            cuttable.cuts.fetch_add(1, Ordering::SeqCst);
            cuttable.proxy.set_link(Link::Up);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.proxies.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `url` with its host and port replaced by `at`.
pub(crate) fn url_at(url: &str, at: SocketAddr) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    parsed
        .set_ip_host(at.ip())
        .map_err(|()| anyhow::anyhow!("{url} cannot take a host"))?;
    parsed
        .set_port(Some(at.port()))
        .map_err(|()| anyhow::anyhow!("{url} cannot take a port"))?;
    Ok(parsed.to_string())
}

/// The address `url` names (its host resolved, its scheme's port when it
/// names none).
pub(crate) fn address_of(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    parsed
        .socket_addrs(|| match parsed.scheme() {
            "amqp" => Some(5672),
            "https" => Some(443),
            _ => Some(80),
        })?
        .into_iter()
        .next()
        .with_context(|| format!("{url} names no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_a_proxy() {
        let at: SocketAddr = "127.0.0.1:40001".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            url_at("amqp://guest:guest@127.0.0.1:5672/%2f", at).ok(),
            Some("amqp://guest:guest@127.0.0.1:40001/%2f".to_owned())
        );
        assert_eq!(
            address_of("amqp://guest:guest@127.0.0.1/%2f").ok(),
            "127.0.0.1:5672".parse().ok()
        );
    }
}
