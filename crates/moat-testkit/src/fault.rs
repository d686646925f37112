//! A TCP proxy a test can cut: stands between moat and a backing service (PostgreSQL, Redis)
//! so that a fault test can take the service away mid-request — every open connection reset,
//! every new one refused — without touching the machine's shared instance, and bring it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, conns) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::<AbortHandle>::new())));
        let (c, cs, up) = (cut.clone(), conns.clone(), upstream.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let up = up.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut open = cs.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|h| !h.is_finished());
                open.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self { addr, cut, conns, accept }
    }

    /// The service is gone: open connections are dropped, new ones closed at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// The service is back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// `url` (`scheme://[user@]host:port/…`) with its host and port replaced by the proxy's.
    pub fn route(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, tail) = rest.split_once('/').map_or((rest, String::new()), |(a, t)| (a, format!("/{t}")));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}{}{tail}", self.addr)
    }
}

/// The `host:port` a URL names (default port `default_port`).
pub fn upstream_of(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') { host.to_owned() } else { format!("{host}:{default_port}") }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upstream_and_route() {
        assert_eq!(super::upstream_of("postgres://u@127.0.0.1:5432/test", 5432), "127.0.0.1:5432");
        assert_eq!(super::upstream_of("redis://localhost", 6379), "localhost:6379");
        assert_eq!(super::upstream_of("redis://h:7/0", 6379), "h:7");
    }
}
