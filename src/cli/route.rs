//! The flags that say where a client finds workers (`call`, `gateway`, `bench`), turned
//! into the library's [`Discovery`] once.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::route::cache::{self, WorkerCache};
use nano_connect::route::Discovery;
use nano_connect::traversal::broker_of;

/// Where workers are found.
///
/// Without --grape and --broker, a DHT node of this process (client mode) joins the DHT
/// through --bootstrap, by default the PUBLIC mainline DHT's routers
/// (router.bittorrent.com:6881, dht.transmissionbt.com:6881, dht.libtorrent.org:25401,
/// relay.pkarr.org:6881).
#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// A grape's HTTP API to look workers up through (on this host or your network).
    #[arg(long, value_name = "URL", conflicts_with = "broker")]
    pub grape: Option<String>,
    /// DHT nodes the own DHT node bootstraps from, HOST:PORT[,HOST:PORT...] [default: the
    /// public mainline routers].
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT", conflicts_with_all = ["grape", "broker"])]
    pub bootstrap: Option<Vec<String>>,
    /// Ask the broker of the grape whose DHT address is HOST:PORT (the broker listens on
    /// PORT + 10000) for its workers, instead of the DHT: reaches workers behind NATs
    /// directly, by hole punching, or through the broker's relay. Repeat or separate with
    /// commas for several.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub broker: Vec<String>,
    /// The file of workers that answered recently, tried first while a lookup runs
    /// [default: $XDG_CACHE_HOME/nano-connect/workers.json; env NANO_CONNECT_CACHE].
    #[arg(long, value_name = "FILE", env = "NANO_CONNECT_CACHE")]
    pub cache: Option<PathBuf>,
    /// Keep no file of workers (wins over --cache and NANO_CONNECT_CACHE).
    #[arg(long)]
    pub no_cache: bool,
}

impl RouteArgs {
    /// The discovery these flags name (starting the own DHT node when it is the one).
    pub async fn discovery(&self) -> anyhow::Result<Discovery> {
        if let Some(url) = &self.grape {
            return Ok(Discovery::Directory(Directory::Grape(Link::new(url))));
        }
        if !self.broker.is_empty() {
            let brokers = self
                .broker
                .iter()
                .map(|b| broker_of(b.trim()))
                .collect::<Result<Vec<_>, _>>()
                .context("--broker")?;
            return Ok(Discovery::Brokers(brokers));
        }
        let bootstrap = self.bootstrap.clone().map(|nodes| {
            nodes
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        });
        let directory = super::embedded_directory(bootstrap).await?;
        Ok(Discovery::Directory(directory))
    }

    /// The worker cache these flags name, if any.
    pub fn cache(&self) -> Option<WorkerCache> {
        if self.no_cache {
            return None;
        }
        let path = self.cache.clone().or_else(cache::default_path)?;
        Some(WorkerCache::open(&path))
    }
}
