//! A plain TCP listener that only counts: every connection it accepts is counted
//! (with the peer and the time) and closed at once, before reading anything. A
//! place the mirror must never connect to (a loopback "internal service", an
//! HTTP proxy it must not use) is one of these: its count is the proof.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Explain, rt};

/// One accepted connection.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub peer: SocketAddr,
    pub at: Instant,
}

/// The running listener. Stops when dropped.
pub struct CountingListener {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    /// Listens on 127.0.0.1, a free port.
    pub fn loopback() -> CountingListener {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("binding a counting listener on 127.0.0.1")
    }

    /// Listens on `addr` (port 0: a free one); an error if it cannot be bound (say
    /// `[::1]` on a host without IPv6).
    pub fn bind(addr: SocketAddr) -> std::io::Result<CountingListener> {
        let listener = rt().block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let log = accepted.clone();
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                // std Mutex: held for a push, never across `.await`.
                log.lock().expect("listener log lock").push(Accepted { peer, at: Instant::now() });
                drop(stream);
            }
        });
        Ok(CountingListener { addr, accepted, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// `http://IP:PORT` (IPv6 bracketed).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections were accepted (since the last [`CountingListener::reset`]).
    pub fn count(&self) -> usize {
        self.accepted.lock().expect("listener log lock").len()
    }

    /// The connections accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().expect("listener log lock").clone()
    }

    /// Forgets the connections counted so far.
    pub fn reset(&self) {
        self.accepted.lock().expect("listener log lock").clear();
    }

    /// Connects once from the test (a positive control: the listener does count),
    /// waits for the count to show it, and forgets it again.
    #[track_caller]
    pub fn self_check(&self) {
        let before = self.count();
        let c = std::net::TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("connecting to the counting listener {}: {e}", self.addr));
        drop(c);
        let seen = super::wait_until(std::time::Duration::from_secs(5), || self.count() > before);
        assert!(seen, "the counting listener on {} did not count a connection made to it", self.addr);
        self.reset();
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.explain());
        }
        self.task.abort();
    }
}

impl Explain for CountingListener {
    fn explain(&self) -> String {
        let accepted = self.accepted();
        let mut s = format!("---- counting listener {} ({} connections) ----\n", self.addr, accepted.len());
        for a in accepted.iter().take(20) {
            s.push_str(&format!("  from {}\n", a.peer));
        }
        s
    }
}
