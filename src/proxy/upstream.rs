//! One route's upstream: where it is, how to reach it, and the pingora peer for a request.
//!
//! Host names are resolved off the request path's critical section with tokio's resolver and
//! cached briefly, so a request never blocks a worker thread on DNS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use pingora::protocols::ALPN;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{WrappedX509, parse_x509};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use url::Url;

use super::exchange::IdlePool;

/// How long a DNS answer for an upstream host is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Why an upstream could not be reached before any byte was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot resolve upstream host {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream host {host} resolved to no address")]
    NoAddress { host: String },
}

/// A route's upstream base URL and connection settings.
#[derive(Debug)]
pub(crate) struct Upstream {
    base: Url,
    host: String,
    port: u16,
    tls: bool,
    host_header: String,
    timeouts: Timeouts,
    ca: Option<Arc<CaType>>,
    resolved: RwLock<Option<(SocketAddr, Instant)>>,
    /// Keep-alive connections for the requests the gateway sends itself.
    idle: IdlePool,
}

/// Connection and read timeouts toward upstreams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    /// Between reads of a response that is not a stream; streams have no read timeout.
    pub(crate) read: Duration,
}

impl Upstream {
    /// `base` is an absolute http(s) URL with a host, as validated by the config.
    pub(crate) fn new(base: Url, timeouts: Timeouts, ca: Option<Arc<CaType>>) -> Self {
        let host = base.host_str().unwrap_or_default().to_owned();
        let tls = base.scheme() == "https";
        let port = base
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let host_header = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        Self {
            base,
            host,
            port,
            tls,
            host_header,
            timeouts,
            ca,
            resolved: RwLock::new(None),
            idle: IdlePool::default(),
        }
    }

    pub(crate) fn base_url(&self) -> &Url {
        &self.base
    }

    /// The `Host` header the upstream expects: its host, and its port when not the default.
    pub(crate) fn host_header(&self) -> &str {
        &self.host_header
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The idle connections to this upstream.
    pub(crate) fn idle(&self) -> &IdlePool {
        &self.idle
    }

    /// A peer for one request; `streaming` lifts the read timeout for long-lived streams.
    pub(crate) async fn peer(&self, streaming: bool) -> Result<HttpPeer, UpstreamError> {
        let addr = self.resolve().await?;
        let sni = if self.tls {
            self.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.timeouts.connect);
        options.total_connection_timeout = Some(self.timeouts.connect);
        options.read_timeout = (!streaming).then_some(self.timeouts.read);
        options.idle_timeout = Some(Duration::from_secs(60));
        options.alpn = ALPN::H1;
        options.ca = self.ca.clone();
        Ok(peer)
    }

    async fn resolve(&self) -> Result<SocketAddr, UpstreamError> {
        if let Some((addr, at)) = *self.resolved.read()
            && at.elapsed() < DNS_TTL
        {
            return Ok(addr);
        }
        let addr = match self.host.trim_matches(['[', ']']).parse() {
            Ok(ip) => SocketAddr::new(ip, self.port),
            Err(_) => self.lookup().await?,
        };
        *self.resolved.write() = Some((addr, Instant::now()));
        Ok(addr)
    }

    async fn lookup(&self) -> Result<SocketAddr, UpstreamError> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| UpstreamError::Resolve {
                host: self.host.clone(),
                source,
            })?;
        addrs.next().ok_or_else(|| UpstreamError::NoAddress {
            host: self.host.clone(),
        })
    }
}

/// Loads the PEM certificates in `path` as the trust roots for one upstream.
pub(crate) fn load_ca(path: &Path) -> std::io::Result<Arc<CaType>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut roots = pingora::tls::RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(e.to_string()))? {
        let cert = cert.map_err(|e| invalid(e.to_string()))?;
        // Check the DER before pingora's parser, which panics on a malformed certificate.
        roots
            .add(cert.clone())
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
        certs.push(WrappedX509::new(cert.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in the file".into()));
    }
    Ok(certs.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
        };
        Upstream::new(Url::parse(url).expect("valid url"), timeouts, None)
    }

    #[test]
    fn host_header_carries_the_port_only_when_it_is_not_the_default() {
        assert_eq!(
            upstream("https://mcp.example.com/v1").host_header(),
            "mcp.example.com"
        );
        assert_eq!(
            upstream("http://127.0.0.1:9000/").host_header(),
            "127.0.0.1:9000"
        );
        assert_eq!(upstream("http://[::1]:9000/").host_header(), "[::1]:9000");
    }

    #[tokio::test]
    async fn ip_literal_upstreams_need_no_resolver() {
        let peer = upstream("http://[::1]:9000/")
            .peer(false)
            .await
            .expect("peer");
        assert_eq!(
            pingora::upstreams::peer::Peer::address(&peer).to_string(),
            "[::1]:9000"
        );
    }
}
