//! UPnP/DIAL identification: M-SEARCH on the LAN, then, for each device that answers, its
//! device description and its DIAL applications, over HTTP to the device's own address.
//!
//! [`SsdpSearch`] owns the search socket (bound to the LAN address, multicast leaving through
//! the LAN interface). [`Sightings`] gathers one search window's responses per device and
//! [`FetchLimiter`] decides which devices are fetched now; both are sans-IO. Each fetch is a
//! task of its own; its [`Identified`] goes straight to the output channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rae_proto::{DialApp, UpnpDescription};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::dial::{app_url, parse_app};
use super::http::{self, HttpError, HttpLimits, HttpUrl};
use super::limiter::{Admission, FetchLimiter, FetchLimits};
use super::ssdp::{m_search, SsdpKind, SsdpMessage, MAX_MESSAGE, SSDP_GROUP_V4, ST_ALL, ST_DIAL};
use super::upnp::parse_description;
use super::ProbeError;

/// Settings of SSDP search and identification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdpSettings {
    /// Search targets sent each round.
    pub search_targets: Vec<String>,
    /// MX of the searches, seconds; responses are gathered for MX + 1 s per device.
    pub mx: u8,
    pub search_every: Duration,
    /// DIAL applications queried on each DIAL server.
    pub dial_apps: Vec<String>,
    pub fetch: FetchLimits,
    pub http: HttpLimits,
    /// Devices gathered in one window at most; more wait for the next search.
    pub max_sightings: usize,
}

impl Default for SsdpSettings {
    fn default() -> Self {
        Self {
            search_targets: vec![ST_ALL.to_owned(), ST_DIAL.to_owned()],
            mx: 2,
            search_every: Duration::from_secs(5 * 60),
            dial_apps: vec!["Netflix".to_owned()],
            fetch: FetchLimits::default(),
            http: HttpLimits::default(),
            max_sightings: 256,
        }
    }
}

/// What identification learnt about the device at `ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identified {
    pub ip: IpAddr,
    pub upnp: UpnpDescription,
    /// The applications the DIAL server has (a 404 means not installed: absent), by name.
    pub dial_apps: Vec<DialApp>,
    /// An ESN from the additional data of the first application that published one.
    pub esn: Option<String>,
}

/// A device that answered SSDP, waiting for identification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub ip: IpAddr,
    /// Its device description; the host is `ip`.
    pub location: HttpUrl,
    /// The location came from a DIAL response (its fetch carries `Application-URL`).
    pub dial: bool,
}

/// Why an SSDP message made no candidate.
#[derive(Debug, thiserror::Error)]
pub enum Ignored {
    #[error("not a search response or alive announcement")]
    NotAnnouncement,
    #[error("no LOCATION")]
    NoLocation,
    #[error("LOCATION unusable: {0}")]
    BadLocation(HttpError),
    #[error("USN already seen in this window")]
    Duplicate,
    #[error("too many devices in this window")]
    Full,
}

#[derive(Debug)]
struct Pending {
    candidate: Candidate,
    usns: HashSet<String>,
    due: Instant,
}

/// One search window's responses, per device: a device answers a search once per device,
/// service and target, and is fetched once. A DIAL location wins over another, as only its
/// description fetch returns the Application-URL.
#[derive(Debug)]
pub struct Sightings {
    window: Duration,
    max_devices: usize,
    pending: HashMap<IpAddr, Pending>,
}

/// USNs remembered per device and window; devices with more services answer with more.
const MAX_USNS: usize = 32;

impl Sightings {
    pub fn new(window: Duration, max_devices: usize) -> Self {
        Self {
            window,
            max_devices,
            pending: HashMap::new(),
        }
    }

    /// Takes an SSDP message `src` sent. The LOCATION must be on `src` itself: the agent
    /// never fetches from a host other than the one that answered.
    pub fn offer(&mut self, src: IpAddr, msg: &SsdpMessage, now: Instant) -> Result<(), Ignored> {
        match &msg.kind {
            SsdpKind::Response { status: 200 } => {}
            SsdpKind::Notify { nts: Some(nts) } if nts.eq_ignore_ascii_case("ssdp:alive") => {}
            _ => return Err(Ignored::NotAnnouncement),
        }
        let location = msg.location.as_deref().ok_or(Ignored::NoLocation)?;
        let location = HttpUrl::parse(location).map_err(Ignored::BadLocation)?;
        location.check_host(src).map_err(Ignored::BadLocation)?;
        let dial = msg
            .target
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(ST_DIAL));
        if !self.pending.contains_key(&src) && self.pending.len() >= self.max_devices {
            return Err(Ignored::Full);
        }
        let entry = self.pending.entry(src).or_insert_with(|| Pending {
            candidate: Candidate {
                ip: src,
                location: location.clone(),
                dial,
            },
            usns: HashSet::new(),
            due: now + self.window,
        });
        if let Some(usn) = &msg.usn {
            if entry.usns.contains(usn) {
                return Err(Ignored::Duplicate);
            }
            if entry.usns.len() < MAX_USNS {
                entry.usns.insert(usn.clone());
            }
        }
        if dial && !entry.candidate.dial {
            entry.candidate.location = location;
            entry.candidate.dial = true;
        }
        Ok(())
    }

    /// When the earliest window closes.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// The devices whose window has closed.
    pub fn take_due(&mut self, now: Instant) -> Vec<Candidate> {
        let due: Vec<IpAddr> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(ip, _)| *ip)
            .collect();
        let mut out: Vec<Candidate> = due
            .into_iter()
            .filter_map(|ip| self.pending.remove(&ip))
            .map(|p| p.candidate)
            .collect();
        out.sort_by_key(|c| c.ip);
        out
    }
}

/// Fetches the description at the candidate's location and, when the response names an
/// Application-URL on the same device, each of `apps`. `local` is the LAN address to
/// connect from.
pub async fn identify(
    candidate: &Candidate,
    local: Option<IpAddr>,
    apps: &[String],
    limits: &HttpLimits,
) -> Result<Identified, ProbeError> {
    let ip = candidate.ip;
    let location = &candidate.location;
    let response = fetch(location, ip, local, limits).await?;
    if response.status != 200 {
        return Err(ProbeError::Status {
            url: location.to_string(),
            status: response.status,
        });
    }
    let upnp = parse_description(&response.body).map_err(|source| ProbeError::Xml {
        url: location.to_string(),
        source,
    })?;
    let mut identified = Identified {
        ip,
        upnp,
        dial_apps: Vec::new(),
        esn: None,
    };
    let Some(application_url) = response.header("application-url") else {
        return Ok(identified);
    };
    let application_url = match HttpUrl::parse(application_url).and_then(|url| {
        url.check_host(ip)?;
        Ok(url)
    }) {
        Ok(url) => url,
        Err(cause) => {
            debug!(%ip, %cause, "DIAL Application-URL not used");
            return Ok(identified);
        }
    };
    for name in apps {
        let url = match app_url(&application_url, name) {
            Ok(url) => url,
            Err(cause) => {
                debug!(%ip, app = %name, %cause, "DIAL application not queried");
                continue;
            }
        };
        let response = match fetch(&url, ip, local, limits).await {
            Ok(response) => response,
            Err(cause) => {
                debug!(%ip, app = %name, %cause, "DIAL application query failed");
                continue;
            }
        };
        // 404 is DIAL's "not installed"; anything else but 200 says nothing either.
        if response.status != 200 {
            debug!(%ip, app = %name, status = response.status, "DIAL application absent");
            continue;
        }
        match parse_app(&response.body) {
            Ok(resource) => {
                if identified.esn.is_none() {
                    identified.esn = resource.esn().map(str::to_owned);
                }
                identified.dial_apps.push(resource.app);
            }
            Err(cause) => debug!(%ip, app = %name, %cause, "DIAL application resource unusable"),
        }
    }
    identified.dial_apps.sort();
    identified.dial_apps.dedup_by(|a, b| a.name == b.name);
    Ok(identified)
}

async fn fetch(
    url: &HttpUrl,
    ip: IpAddr,
    local: Option<IpAddr>,
    limits: &HttpLimits,
) -> Result<http::HttpResponse, ProbeError> {
    http::get(url, ip, local, limits)
        .await
        .map_err(|source| ProbeError::Http {
            url: url.to_string(),
            source,
        })
}

/// Counts of what the search saw, for the periodic debug summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SsdpCounters {
    pub searches: u64,
    pub send_failures: u64,
    pub messages: u64,
    pub malformed: u64,
    pub ignored: u64,
    pub dropped_queue_full: u64,
    pub identified: u64,
    pub failed: u64,
}

/// The SSDP search task's socket and settings.
#[derive(Debug)]
pub struct SsdpSearch {
    socket: std::net::UdpSocket,
    local: Ipv4Addr,
    settings: SsdpSettings,
}

impl SsdpSearch {
    /// Binds the search socket to `local` (the router's LAN address) with multicast leaving
    /// through that address's interface, so searches go to the LAN and nowhere else.
    pub fn bind(local: Ipv4Addr, settings: SsdpSettings) -> Result<Self, ProbeError> {
        let socket_err = |what| move |source| ProbeError::Socket { what, source };
        let socket = std::net::UdpSocket::bind(SocketAddr::from((local, 0)))
            .map_err(socket_err("binding the SSDP search socket"))?;
        set_multicast_if_v4(&socket, local)
            .map_err(socket_err("setting IP_MULTICAST_IF on the SSDP socket"))?;
        // TTL 1, below UDA 1.1's suggested 2: DUTs sit on the agent's own segment and a
        // search must never cross a router. Searches must not be looped back to us either.
        socket
            .set_multicast_ttl_v4(1)
            .map_err(socket_err("setting the SSDP multicast TTL"))?;
        socket
            .set_multicast_loop_v4(false)
            .map_err(socket_err("disabling SSDP multicast loop"))?;
        socket
            .set_nonblocking(true)
            .map_err(socket_err("making the SSDP socket non-blocking"))?;
        Ok(Self {
            socket,
            local,
            settings,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ProbeError> {
        self.socket
            .local_addr()
            .map_err(|source| ProbeError::Socket {
                what: "reading the SSDP socket's address",
                source,
            })
    }

    /// Searches every `search_every` until `shutdown` resolves or `out` is closed, sending one
    /// [`Identified`] per successful identification.
    pub async fn run(
        self,
        out: mpsc::Sender<Identified>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        let Self {
            socket,
            local,
            settings,
        } = self;
        let socket =
            tokio::net::UdpSocket::from_std(socket).map_err(|source| ProbeError::Socket {
                what: "registering the SSDP socket with the runtime",
                source,
            })?;
        let window = Duration::from_secs(u64::from(settings.mx.clamp(1, 5)) + 1);
        let mut sightings = Sightings::new(window, settings.max_sightings);
        let mut limiter = FetchLimiter::new(settings.fetch.clone(), Instant::now());
        let apps: Arc<[String]> = settings.dial_apps.clone().into();
        let http = Arc::new(settings.http.clone());
        let mut queue: VecDeque<Candidate> = VecDeque::new();
        let mut jobs: JoinSet<(IpAddr, bool)> = JoinSet::new();
        let mut counters = SsdpCounters::default();
        let mut send_failing = false;
        let mut search = tokio::time::interval(settings.search_every.max(Duration::from_secs(1)));
        search.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut recv_paused_until: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            for candidate in sightings.take_due(now) {
                if queue.iter().any(|q| q.ip == candidate.ip) {
                    continue;
                }
                if queue.len() >= limiter.limits().max_queued {
                    counters.dropped_queue_full += 1;
                    continue;
                }
                queue.push_back(candidate);
            }
            while let Some(candidate) = queue.front() {
                match limiter.try_start(candidate.ip, now) {
                    Admission::Start => {
                        let Some(candidate) = queue.pop_front() else {
                            break;
                        };
                        let (out, apps, http) = (out.clone(), Arc::clone(&apps), Arc::clone(&http));
                        jobs.spawn(async move {
                            let ip = candidate.ip;
                            match identify(&candidate, Some(IpAddr::V4(local)), &apps, &http).await
                            {
                                Ok(identified) => {
                                    // A closed channel ends the search loop; nothing to do here.
                                    let _ = out.send(identified).await;
                                    (ip, true)
                                }
                                Err(cause) => {
                                    debug!(%ip, %cause, "UPnP identification failed");
                                    (ip, false)
                                }
                            }
                        });
                    }
                    Admission::TooSoon => {
                        queue.pop_front();
                    }
                    Admission::Busy => break,
                }
            }
            let slot = if queue.is_empty() {
                None
            } else {
                limiter.next_slot(now)
            };
            let wake = [sightings.next_due(), slot, recv_paused_until]
                .into_iter()
                .flatten()
                .min();
            let receiving = !matches!(recv_paused_until, Some(t) if now < t);
            if receiving {
                recv_paused_until = None;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = out.closed() => break,
                _ = search.tick() => {
                    debug!(?counters, "SSDP search");
                    for target in &settings.search_targets {
                        let datagram = m_search(target, settings.mx);
                        match socket.send_to(&datagram, SSDP_GROUP_V4).await {
                            Ok(_) => {
                                counters.searches += 1;
                                if send_failing {
                                    info!("SSDP searches are sent again");
                                    send_failing = false;
                                }
                            }
                            Err(cause) => {
                                counters.send_failures += 1;
                                // Once per outage: a LAN port that is down must not flood the log.
                                if !send_failing {
                                    warn!(%cause, lan = %local, "SSDP search could not be sent");
                                    send_failing = true;
                                }
                            }
                        }
                    }
                }
                received = socket.recv_from(&mut buf), if receiving => match received {
                    Ok((len, src)) => {
                        counters.messages += 1;
                        match SsdpMessage::parse(&buf[..len]) {
                            Ok(msg) => {
                                if let Err(why) = sightings.offer(src.ip(), &msg, Instant::now()) {
                                    counters.ignored += 1;
                                    debug!(%src, %why, "SSDP message ignored");
                                }
                            }
                            Err(cause) => {
                                counters.malformed += 1;
                                debug!(%src, %cause, "SSDP message malformed");
                            }
                        }
                    }
                    Err(cause) => {
                        debug!(%cause, "SSDP receive failed");
                        recv_paused_until = Some(Instant::now() + Duration::from_secs(1));
                    }
                },
                Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                    let now = Instant::now();
                    match done {
                        Ok((ip, succeeded)) => {
                            limiter.finish(ip, succeeded, now);
                            if succeeded {
                                counters.identified += 1;
                            } else {
                                counters.failed += 1;
                            }
                        }
                        Err(cause) => warn!(%cause, "UPnP identification task ended abnormally"),
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        jobs.shutdown().await;
        Ok(())
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(tokio::time::Instant::from_std(when)).await,
        None => std::future::pending().await,
    }
}

/// IP_MULTICAST_IF: the interface multicast leaves through, named by its address (std and
/// tokio do not expose it).
fn set_multicast_if_v4(socket: &std::net::UdpSocket, addr: Ipv4Addr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::in_addr {
        s_addr: u32::from(addr).to_be(),
    };
    let len = std::mem::size_of::<libc::in_addr>() as libc::socklen_t;
    // SAFETY: the fd is open for the lifetime of `socket`, and `value` is an `in_addr` that
    // outlives the call, with `len` its exact size, as IP_MULTICAST_IF expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The first IPv4 address of interface `name`, to bind the search socket to.
pub fn interface_ipv4(name: &str) -> Result<Ipv4Addr, ProbeError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|errno| ProbeError::Socket {
        what: "listing interface addresses",
        source: errno.into(),
    })?;
    addrs
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .ok_or_else(|| ProbeError::NoIpv4 {
            interface: name.to_owned(),
        })
}

#[cfg(test)]
mod tests;
