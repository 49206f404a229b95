//! A reverse proxy written directly on pingora's `ProxyHttp`, with nothing of the gateway
//! around it. `benches/load.sh` runs it beside the gateway and nginx, to show what pingora's
//! own HTTP/1 path costs per request: the cost that the gateway's fast lane avoids for small
//! `POST`s.
//!
//! ```text
//! cargo run --release --example pingora_baseline -- LISTEN UPSTREAM PREFIX TOKEN_FILE THREADS
//! cargo run --release --example pingora_baseline -- 127.0.0.1:8100 127.0.0.1:9000 /bench token 1
//! ```
//!
//! Every request under PREFIX goes to the plain-HTTP UPSTREAM (`host:port`) with PREFIX
//! taken off the path, the client's `Authorization` replaced by the bearer token read from
//! TOKEN_FILE, on THREADS worker threads, each with a runtime of its own (as `serve` runs).
//! Pingora keeps the upstream connections alive; there is no routing table, no token
//! store, no limits, no metrics and no logging.

use std::process::ExitCode;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

/// As in the gateway binary, so the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: pingora_baseline LISTEN UPSTREAM PREFIX TOKEN_FILE THREADS";

struct Baseline {
    upstream: String,
    prefix: String,
    authorization: String,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let rest = request
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .strip_prefix(self.prefix.as_str())
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or("/")
            .to_owned();
        request.set_uri(rest.parse().expect("a path taken from a valid URI"));
        request.insert_header(http::header::AUTHORIZATION, self.authorization.as_str())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, prefix, token_file, threads] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let token = match std::fs::read_to_string(token_file) {
        Ok(token) => token.trim().to_owned(),
        Err(error) => {
            eprintln!("pingora_baseline: cannot read {token_file}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("pingora_baseline: THREADS must be a number\n{USAGE}");
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let baseline = Baseline {
        upstream: upstream.clone(),
        prefix: prefix.clone(),
        authorization: format!("Bearer {token}"),
    };
    let mut service = http_proxy_service(&server.configuration, baseline);
    service.add_tcp(listen);
    server.add_service(service);
    println!("pingora_baseline listening on http://{listen}");
    server.run_forever()
}
