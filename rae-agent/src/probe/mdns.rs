//! mDNS / DNS-SD browsing with `mdns-sd`: enumerate the service types on the LAN
//! (`_services._dns-sd._udp.local.`), browse each, and report per host its name, addresses and
//! services with selected TXT keys.
//!
//! [`MdnsBrowser`] owns the `mdns-sd` daemon, restricted to the LAN interface before the
//! first query, and shuts it down when it ends (or is dropped). [`MdnsTable`] is the sans-IO
//! part: it turns resolved instances into per-host reports, at most one per host per
//! `report_every`, with every collection bounded.
//!
//! Limitation: `mdns-sd` 0.21 joins the mDNS group on every interface when the daemon starts,
//! before the interface selection applies (it then leaves them): each start costs one
//! IGMP/MLD join and leave on the router's other interfaces. No query is ever sent on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use rae_proto::{MdnsService, Text, TxtEntry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::ProbeError;

/// The DNS-SD service type enumeration (RFC 6763 §9).
pub const META_QUERY: &str = "_services._dns-sd._udp.local.";

/// Settings of mDNS browsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsSettings {
    /// TXT keys kept (case-insensitive); others are dropped.
    pub txt_keys: Vec<String>,
    /// Longest TXT value kept, bytes (longer ones are cut).
    pub max_txt_value: usize,
    /// Service types browsed at most.
    pub max_types: usize,
    pub max_hosts: usize,
    pub max_services_per_host: usize,
    /// Shortest time between two reports of one host.
    pub report_every: Duration,
    /// How often the type enumeration restarts (catching types that appeared since), and the
    /// shortest time before a type whose browse stopped is browsed again.
    pub rebrowse_every: Duration,
}

impl Default for MdnsSettings {
    fn default() -> Self {
        Self {
            txt_keys: [
                "md",
                "fn",
                "model",
                "manufacturer",
                "mf",
                "id",
                "deviceid",
                "ty",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_txt_value: 128,
            max_types: 64,
            max_hosts: 512,
            max_services_per_host: 32,
            report_every: Duration::from_secs(10),
            rebrowse_every: Duration::from_secs(15 * 60),
        }
    }
}

/// Everything browsing knows about one host: the unit the registry core merges into the
/// device that has one of `addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsHost {
    /// The SRV target without `.local.`, e.g. `living-room-tv`.
    pub hostname: String,
    /// Sorted; empty if the host's address records were not seen.
    pub addresses: Vec<IpAddr>,
    /// Sorted by (type, instance); empty when the host's last service went away.
    pub services: Vec<MdnsService>,
}

/// One resolved service instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedInstance {
    /// Full instance name, the key of removals.
    pub fullname: String,
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub service: MdnsService,
}

/// Longest host, type or instance name kept (a DNS name is at most 255 bytes).
const MAX_NAME: usize = 255;

/// Builds a [`ResolvedInstance`] from what `mdns-sd` resolved. `None` when the names are
/// unusable (empty, too long).
pub fn resolved_instance<'a>(
    ty_domain: &str,
    fullname: &str,
    host: &str,
    port: u16,
    addresses: impl IntoIterator<Item = IpAddr>,
    txt: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    settings: &MdnsSettings,
) -> Option<ResolvedInstance> {
    if [ty_domain, fullname, host]
        .iter()
        .any(|n| n.is_empty() || n.len() > MAX_NAME)
    {
        return None;
    }
    let instance = strip_suffix_ignore_case(fullname, ty_domain)
        .and_then(|i| i.strip_suffix('.'))
        .filter(|i| !i.is_empty())
        .unwrap_or(fullname);
    let hostname = host.trim_end_matches('.');
    let hostname = strip_suffix_ignore_case(hostname, ".local").unwrap_or(hostname);
    if hostname.is_empty() {
        return None;
    }
    let mut entries: Vec<TxtEntry> = Vec::new();
    for (key, value) in txt {
        let wanted = settings
            .txt_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key));
        // RFC 6763 §6.4: only the first occurrence of a key counts.
        if !wanted || entries.iter().any(|e| e.key.eq_ignore_ascii_case(key)) {
            continue;
        }
        entries.push(TxtEntry {
            key: key.to_owned(),
            value: value.map(|v| Text::from(&v[..v.len().min(settings.max_txt_value)])),
        });
    }
    let mut addresses: Vec<IpAddr> = addresses.into_iter().collect();
    addresses.sort();
    addresses.dedup();
    Some(ResolvedInstance {
        fullname: fullname.to_owned(),
        hostname: hostname.to_owned(),
        addresses,
        service: MdnsService {
            service_type: ty_domain.to_owned(),
            instance: instance.to_owned(),
            port,
            txt: entries,
        },
    })
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let at = text.len().checked_sub(suffix.len())?;
    let tail = text.get(at..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &text[..at])
}

#[derive(Debug)]
struct HostEntry {
    hostname: String,
    addresses: BTreeSet<IpAddr>,
    /// Keyed by lowercase full instance name.
    services: BTreeMap<String, MdnsService>,
    /// When the first unreported change happened; `None` when all is reported.
    changed_at: Option<Instant>,
    last_report: Option<Instant>,
}

impl HostEntry {
    fn changed(&mut self, now: Instant) {
        self.changed_at.get_or_insert(now);
    }
}

/// Resolved instances per host, reported on change, each host at most once per
/// `report_every`.
#[derive(Debug)]
pub struct MdnsTable {
    report_every: Duration,
    max_hosts: usize,
    max_services_per_host: usize,
    /// Keyed by lowercase hostname.
    hosts: HashMap<String, HostEntry>,
    /// Lowercase full instance name -> lowercase hostname.
    instances: HashMap<String, String>,
    /// Instances refused because a table was full.
    pub refused: u64,
}

impl MdnsTable {
    pub fn new(settings: &MdnsSettings) -> Self {
        Self {
            report_every: settings.report_every,
            max_hosts: settings.max_hosts,
            max_services_per_host: settings.max_services_per_host,
            hosts: HashMap::new(),
            instances: HashMap::new(),
            refused: 0,
        }
    }

    pub fn resolved(&mut self, instance: ResolvedInstance, now: Instant) {
        let key = instance.fullname.to_ascii_lowercase();
        let host_key = instance.hostname.to_ascii_lowercase();
        if self.instances.get(&key).is_some_and(|h| *h != host_key) {
            // The instance moved to another host (a device renamed or replaced).
            self.removed(&instance.fullname, now);
        }
        if !self.hosts.contains_key(&host_key) && self.hosts.len() >= self.max_hosts {
            self.refused += 1;
            return;
        }
        let entry = self
            .hosts
            .entry(host_key.clone())
            .or_insert_with(|| HostEntry {
                hostname: instance.hostname.clone(),
                addresses: BTreeSet::new(),
                services: BTreeMap::new(),
                changed_at: None,
                last_report: None,
            });
        if !entry.services.contains_key(&key) && entry.services.len() >= self.max_services_per_host
        {
            self.refused += 1;
            return;
        }
        let addresses: BTreeSet<IpAddr> = instance.addresses.into_iter().collect();
        if !addresses.is_empty() && addresses != entry.addresses {
            entry.addresses = addresses;
            entry.changed(now);
        }
        if entry.services.get(&key) != Some(&instance.service) {
            entry.services.insert(key.clone(), instance.service);
            entry.changed(now);
        }
        self.instances.insert(key, host_key);
    }

    pub fn removed(&mut self, fullname: &str, now: Instant) {
        let key = fullname.to_ascii_lowercase();
        let Some(host_key) = self.instances.remove(&key) else {
            return;
        };
        if let Some(entry) = self.hosts.get_mut(&host_key) {
            if entry.services.remove(&key).is_some() {
                entry.changed(now);
            }
        }
    }

    fn due_at(&self, entry: &HostEntry) -> Option<Instant> {
        let changed = entry.changed_at?;
        Some(match entry.last_report {
            Some(last) => changed.max(last + self.report_every),
            None => changed,
        })
    }

    /// When the next report is due; `None` while nothing changed.
    pub fn next_due(&self) -> Option<Instant> {
        self.hosts.values().filter_map(|e| self.due_at(e)).min()
    }

    /// The hosts with unreported changes whose last report is old enough. A host whose last
    /// service went away is reported with no services, then forgotten.
    pub fn take_due(&mut self, now: Instant) -> Vec<MdnsHost> {
        let mut reports = Vec::new();
        let mut gone = Vec::new();
        let report_every = self.report_every;
        for (key, entry) in &mut self.hosts {
            let due = entry.changed_at.is_some()
                && entry
                    .last_report
                    .map_or(true, |last| now >= last + report_every);
            if !due {
                continue;
            }
            entry.changed_at = None;
            entry.last_report = Some(now);
            let mut services: Vec<MdnsService> = entry.services.values().cloned().collect();
            services.sort_by(|a, b| {
                (&a.service_type, &a.instance).cmp(&(&b.service_type, &b.instance))
            });
            if services.is_empty() {
                gone.push(key.clone());
            }
            reports.push(MdnsHost {
                hostname: entry.hostname.clone(),
                addresses: entry.addresses.iter().copied().collect(),
                services,
            });
        }
        for key in gone {
            self.hosts.remove(&key);
        }
        reports.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        reports
    }
}

/// Whether a name from the type enumeration is a service type `mdns-sd` can browse.
fn browsable_type(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.starts_with('_')
        && (name.ends_with("._tcp.local.") || name.ends_with("._udp.local."))
        && !name.eq_ignore_ascii_case(META_QUERY)
}

/// The `mdns-sd` daemon, shut down when dropped.
struct Daemon(Option<ServiceDaemon>);

impl Daemon {
    fn get(&self) -> Result<&ServiceDaemon, ProbeError> {
        self.0.as_ref().ok_or(ProbeError::Mdns {
            what: "using the daemon",
            source: mdns_sd::Error::DaemonShutdown,
        })
    }

    /// Stops the daemon thread and waits (bounded) for it to confirm.
    async fn shutdown(&mut self) {
        let Some(daemon) = self.0.take() else {
            return;
        };
        match daemon.shutdown() {
            Ok(status) => {
                let wait = tokio::time::timeout(Duration::from_secs(3), status.recv_async());
                if wait.await.is_err() {
                    warn!("the mDNS daemon did not confirm its shutdown");
                }
            }
            Err(cause) => debug!(%cause, "mDNS daemon already stopped"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.0.take() {
            // The thread exits on its own once it sees the command.
            let _ = daemon.shutdown();
        }
    }
}

/// An event of one browse, tagged with the browse's generation so that events of a
/// replaced browse are told apart from the current one's.
struct Forwarded {
    ty: String,
    generation: u64,
    /// `None`: the browse's channel closed.
    event: Option<ServiceEvent>,
}

/// The browses running on the daemon, their event forwarders, and when stopped ones ended.
struct Browses {
    tx: mpsc::Sender<Forwarded>,
    forwarders: JoinSet<()>,
    /// Type -> generation of its current browse.
    running: HashMap<String, u64>,
    /// Type -> when its browse stopped, for the re-browse limit.
    stopped: HashMap<String, Instant>,
    generation: u64,
}

impl Browses {
    /// Browses `ty`, replacing a running browse of it, and forwards its events.
    fn start(&mut self, daemon: &ServiceDaemon, ty: &str) -> Result<(), ProbeError> {
        let receiver = daemon.browse(ty).map_err(|source| ProbeError::Mdns {
            what: "starting a browse",
            source,
        })?;
        self.generation += 1;
        self.running.insert(ty.to_owned(), self.generation);
        self.stopped.remove(ty);
        let (tx, ty, generation) = (self.tx.clone(), ty.to_owned(), self.generation);
        self.forwarders.spawn(async move {
            while let Ok(event) = receiver.recv_async().await {
                let event = Some(event);
                let forwarded = Forwarded {
                    ty: ty.clone(),
                    generation,
                    event,
                };
                if tx.send(forwarded).await.is_err() {
                    return;
                }
            }
            let ended = Forwarded {
                ty,
                generation,
                event: None,
            };
            let _ = tx.send(ended).await;
        });
        Ok(())
    }

    fn types(&self) -> usize {
        self.running.keys().filter(|t| *t != META_QUERY).count()
    }
}

/// A daemon that has shut down fails every call: that ends the browser. Anything else
/// (its command queue full) is worth a retry later.
fn check_fatal(result: Result<(), ProbeError>, what: &str) -> Result<(), ProbeError> {
    match result {
        Err(ProbeError::Mdns {
            source: mdns_sd::Error::DaemonShutdown,
            ..
        }) => result,
        Err(cause) => {
            debug!(%cause, "mDNS: {what} failed, retried later");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// The mDNS browsing task's daemon and settings.
pub struct MdnsBrowser {
    daemon: Daemon,
    settings: MdnsSettings,
}

impl std::fmt::Debug for MdnsBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsBrowser")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MdnsBrowser {
    /// Starts the `mdns-sd` daemon on `interface` only. The daemon thread lives in the
    /// calling thread's network namespace.
    pub fn start(interface: &str, settings: MdnsSettings) -> Result<Self, ProbeError> {
        let mdns = |what| move |source| ProbeError::Mdns { what, source };
        let daemon = Daemon(Some(
            ServiceDaemon::new().map_err(mdns("starting the mDNS daemon"))?,
        ));
        // Commands run in order, before any browse sent later: no query leaves elsewhere.
        let d = daemon.get()?;
        d.disable_interface(IfKind::All)
            .map_err(mdns("disabling all interfaces"))?;
        d.enable_interface(IfKind::Name(interface.to_owned()))
            .map_err(mdns("enabling the LAN interface"))?;
        // The agent only queries; a host it runs on has nothing to announce.
        d.set_multicast_loop_v4(false)
            .map_err(mdns("disabling IPv4 multicast loop"))?;
        d.set_multicast_loop_v6(false)
            .map_err(mdns("disabling IPv6 multicast loop"))?;
        Ok(Self { daemon, settings })
    }

    /// Browses until `shutdown` resolves or `out` closes, then stops the daemon.
    pub async fn run(
        mut self,
        out: mpsc::Sender<MdnsHost>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        let (tx, rx) = mpsc::channel::<Forwarded>(256);
        let mut browses = Browses {
            tx,
            forwarders: JoinSet::new(),
            running: HashMap::new(),
            stopped: HashMap::new(),
            generation: 0,
        };
        let result = self.browse(&mut browses, rx, out, shutdown).await;
        browses.forwarders.shutdown().await;
        self.daemon.shutdown().await;
        result
    }

    async fn browse(
        &self,
        browses: &mut Browses,
        mut rx: mpsc::Receiver<Forwarded>,
        out: mpsc::Sender<MdnsHost>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProbeError> {
        let mut table = MdnsTable::new(&self.settings);
        browses.start(self.daemon.get()?, META_QUERY)?;
        let every = self.settings.rebrowse_every.max(Duration::from_secs(1));
        let mut rebrowse = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        rebrowse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let wake = table.next_due();
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = out.closed() => return Ok(()),
                Some(forwarded) = rx.recv() => self.on_event(browses, &mut table, forwarded)?,
                _ = rebrowse.tick() => self.rebrowse(browses, every)?,
                () = sleep_until(wake), if wake.is_some() => {}
            }
            for host in table.take_due(Instant::now()) {
                tokio::select! {
                    sent = out.send(host) => if sent.is_err() { return Ok(()) },
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }

    fn on_event(
        &self,
        browses: &mut Browses,
        table: &mut MdnsTable,
        forwarded: Forwarded,
    ) -> Result<(), ProbeError> {
        if browses.running.get(&forwarded.ty) != Some(&forwarded.generation) {
            return Ok(());
        }
        let now = Instant::now();
        match forwarded.event {
            None | Some(ServiceEvent::SearchStopped(_)) => {
                browses.running.remove(&forwarded.ty);
                browses.stopped.insert(forwarded.ty, now);
            }
            Some(ServiceEvent::ServiceFound(ty, name)) if ty == META_QUERY => {
                let known =
                    browses.running.contains_key(&name) || browses.stopped.contains_key(&name);
                if known || !browsable_type(&name) {
                    return Ok(());
                }
                if browses.types() >= self.settings.max_types {
                    debug!(ty = %name, "mDNS type not browsed: too many types");
                    return Ok(());
                }
                let started = browses.start(self.daemon.get()?, &name);
                check_fatal(started, "browsing a service type")?;
            }
            Some(ServiceEvent::ServiceResolved(resolved)) => {
                let instance = resolved_instance(
                    &resolved.ty_domain,
                    &resolved.fullname,
                    &resolved.host,
                    resolved.port,
                    resolved.addresses.iter().map(|a| a.to_ip_addr()),
                    resolved.txt_properties.iter().map(|p| (p.key(), p.val())),
                    &self.settings,
                );
                match instance {
                    Some(instance) => table.resolved(instance, now),
                    None => debug!(name = %resolved.fullname, "mDNS instance unusable"),
                }
            }
            Some(ServiceEvent::ServiceRemoved(_, fullname)) => table.removed(&fullname, now),
            Some(_) => {}
        }
        Ok(())
    }

    /// Restarts the type enumeration, which re-queries at once (`mdns-sd` backs a running
    /// browse off to hourly), so types that appeared since are found; types whose browse
    /// stopped long enough ago may be browsed again when found.
    fn rebrowse(&self, browses: &mut Browses, every: Duration) -> Result<(), ProbeError> {
        let now = Instant::now();
        browses
            .stopped
            .retain(|_, at| now.duration_since(*at) < every);
        let daemon = self.daemon.get()?;
        let stopped = daemon
            .stop_browse(META_QUERY)
            .map_err(|source| ProbeError::Mdns {
                what: "stopping the type enumeration",
                source,
            });
        check_fatal(stopped, "stopping the type enumeration")?;
        check_fatal(
            browses.start(daemon, META_QUERY),
            "restarting the type enumeration",
        )
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(tokio::time::Instant::from_std(when)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
