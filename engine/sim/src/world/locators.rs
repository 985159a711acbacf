//! Discovery in the simulated world: one locator per site (a process of its own, or embedded in
//! the site's server), running the real directory ([`Directory`]: register, heartbeat, expiry,
//! the exchange of site maps with [`ExchangeRounds`], aging out) on its own clock, which starts
//! at 0 at every (re)start as the node's does. Each site's server registers and heartbeats with
//! its locator through the real [`RegistrationLink`]; locators exchange their maps with their
//! `remote-locators` and, transitively, every locator they learn of. Every call is a message
//! on the simulated network: delayed, sometimes lost, cut by partitions, lost when its
//! destination is down; a call with no answer fails after [`CALL_TIMEOUT_MS`], as the node's
//! HTTP clients do. A sender finds a remote site's receivers only by asking its own site's
//! locator ([`World::lookup`]).
//!
//! | item | what it is |
//! |---|---|
//! | [`Discovery`] | every locator, every server's registration agent, the messages in flight, and the ground truth the checks compare against |
//! | [`Locator`] | one site's locator process: its directory (gone while it is down) and its exchange round |
//! | [`Agent`] | one site's registration agent (gone while the site is down) |

use std::collections::{BTreeMap, HashMap, VecDeque};

use strait_engine::bucket::ShardId;
use strait_engine::locator::{
    Address, Directory, DirectoryError, ExchangeRounds, MemberName, ReceiverEndpoint, ServerInfo,
    SiteMap, choose_receiver, round_map_aged,
};
use strait_engine::registration::{AgentCall, CallOutcome, Notice, RegistrationLink};
use strait_queue::ids::SiteId;

use super::{STEP_MS_MAX, Site, World};
use crate::rng::Rng;

/// How long a call to a locator waits for its answer (the node's `LOCATOR_CALL_TIMEOUT_MS` and
/// `EXCHANGE_CALL_TIMEOUT_MS`).
pub(super) const CALL_TIMEOUT_MS: u64 = 2_000;
/// How long a sender waits before asking its locator again (the node's `LOOKUP_RETRY_MS`).
pub(super) const LOOKUP_RETRY_MS: u64 = 1_000;
/// The longest a message between sites takes; within a site, at most 2 ms.
pub(super) const LATENCY_MS_MAX: u64 = 80;
/// The locator port, and the first receiver port (one receiver port per shard, as the node).
const LOCATOR_PORT: u16 = 10_334;
const RECEIVER_PORT_BASE: u16 = 5_000;
const CLIENT_PORT: u16 = 6_379;

/// One site's locator process.
#[derive(Debug)]
pub(super) struct Locator {
    /// The directory; `None` while the locator is down (its state is in memory only).
    pub(super) dir: Option<Directory>,
    address: Address,
    remote: Vec<Address>,
    rounds: ExchangeRounds,
    round: Option<Round>,
    /// When the process (re)started: its clock reads the simulation's time since then.
    started_at: u64,
    pub(super) restart_at: u64,
    /// Runs inside the site's server (`start-locator`): it dies and restarts with the site.
    pub(super) embedded: bool,
}

/// An exchange round under way: the targets not called yet and the call waiting for its answer.
#[derive(Debug)]
struct Round {
    targets: VecDeque<Address>,
    map: SiteMap,
    made_ms: u64,
    /// (call id, when it gives up in simulation ms, when it left in the locator's ms).
    call: Option<(u64, u64, u64)>,
}

/// One site's registration agent.
#[derive(Debug)]
pub(super) struct Agent {
    link: RegistrationLink,
    started_at: u64,
    /// (call id, the call, when it gives up in simulation ms).
    pending: Option<(u64, AgentCall, u64)>,
}

#[derive(Debug)]
enum Msg {
    Register {
        call: u64,
        info: ServerInfo,
    },
    Heartbeat {
        call: u64,
        name: MemberName,
    },
    AgentReply {
        call: u64,
        outcome: CallOutcome,
    },
    Exchange {
        call: u64,
        from: SiteId,
        map: SiteMap,
    },
    ExchangeReply {
        call: u64,
        from: SiteId,
        map: SiteMap,
    },
}

/// A message on its way from site `from` to site `to`, due at `at`.
#[derive(Debug)]
struct Post {
    at: u64,
    from: usize,
    to: usize,
    msg: Msg,
}

/// Discovery's state in the world.
#[derive(Debug)]
pub(super) struct Discovery {
    pub(super) locators: Vec<Locator>,
    pub(super) agents: Vec<Option<Agent>>,
    posts: Vec<Post>,
    next_call: u64,
    by_address: HashMap<Address, usize>,
    member_timeout_ms: u64,
    remote_timeout_ms: u64,
    interval_ms: u64,
    /// Messages lost at random, per mille.
    loss: u64,
    /// What each site's server advertises.
    endpoints: Vec<Vec<ReceiverEndpoint>>,
    /// Ground truth: when each site's locator last took a register or heartbeat of its server.
    heard: Vec<Option<u64>>,
    /// A server's calls to its locator are lost until then (a stalled agent, a firewall).
    pub(super) silent_until: Vec<u64>,
    /// Site pairs (lower index first) whose locators cannot call each other until a time.
    cuts: BTreeMap<(usize, usize), u64>,
}

fn server_name(site: SiteId) -> MemberName {
    MemberName(format!("server{site}"))
}

fn host(site: SiteId) -> String {
    format!("site{site}")
}

impl Discovery {
    /// A locator per site, with `remote-locators` that connect every site to every other
    /// (a random tree plus random extra links), and member and remote-entry timeouts, exchange
    /// interval and message loss drawn from the seed.
    pub(super) fn new(rng: &mut Rng, sites: &[Site]) -> Discovery {
        let n = sites.len();
        let member_timeout_ms = rng.range(300, 3_000);
        let interval_ms = rng.range(50, 1_000);
        let remote_timeout_ms = (interval_ms * rng.range(3, 6)).max(member_timeout_ms);
        let embedded: Vec<bool> = (0..n).map(|_| rng.chance(333)).collect();
        let address = |i: usize| Address {
            host: if embedded[i] {
                host(sites[i].id)
            } else {
                format!("locator{}", sites[i].id)
            },
            port: LOCATOR_PORT,
        };
        let mut links: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, l) in links.iter_mut().enumerate().skip(1) {
            l.push(rng.below(i));
        }
        for (i, l) in links.iter_mut().enumerate() {
            let j = rng.below(n);
            if j != i && rng.chance(300) && !l.contains(&j) {
                l.push(j);
            }
        }
        let locators = (0..n)
            .map(|i| Locator {
                dir: None,
                address: address(i),
                remote: links[i].iter().map(|&j| address(j)).collect(),
                rounds: ExchangeRounds::new(interval_ms),
                round: None,
                started_at: 0,
                restart_at: 0,
                embedded: embedded[i],
            })
            .collect();
        let endpoints = sites
            .iter()
            .map(|s| {
                (0..s.table.shards())
                    .map(|h| ReceiverEndpoint {
                        address: Address {
                            host: host(s.id),
                            port: RECEIVER_PORT_BASE + h,
                        },
                        buckets: s.table.buckets_of(ShardId(h)).collect(),
                    })
                    .collect()
            })
            .collect();
        let mut d = Discovery {
            by_address: (0..n).map(|i| (address(i), i)).collect(),
            locators,
            agents: (0..n).map(|_| Some(Agent::new(0))).collect(),
            posts: Vec::new(),
            next_call: 0,
            member_timeout_ms,
            remote_timeout_ms,
            interval_ms,
            loss: rng.range(0, 50),
            endpoints,
            heard: vec![None; n],
            silent_until: vec![0; n],
            cuts: BTreeMap::new(),
        };
        for (i, site) in sites.iter().enumerate() {
            d.start_locator(i, site.id, 0);
        }
        d
    }

    /// Starts (or restarts) locator `i` of site `site` at `now`, with an empty directory.
    fn start_locator(&mut self, i: usize, site: SiteId, now: u64) {
        let l = &mut self.locators[i];
        l.dir = Some(
            Directory::new(
                Some(site),
                l.address.clone(),
                l.remote.clone(),
                self.member_timeout_ms,
            )
            .with_locator_name(MemberName(format!("locator{site}")))
            .with_remote_entry_timeout_ms(self.remote_timeout_ms),
        );
        l.rounds = ExchangeRounds::new(self.interval_ms);
        l.round = None;
        l.started_at = now;
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "locators: member timeout {} ms, exchange every {} ms, remote entries {} ms, {} per mille of messages lost; embedded {:?}, remote-locators {:?}",
            self.member_timeout_ms,
            self.interval_ms,
            self.remote_timeout_ms,
            self.loss,
            self.locators.iter().map(|l| l.embedded).collect::<Vec<_>>(),
            self.locators
                .iter()
                .map(|l| l.remote.iter().map(|a| a.host.clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        )
    }

    pub(super) fn member_timeout_ms(&self) -> u64 {
        self.member_timeout_ms
    }

    fn call_id(&mut self) -> u64 {
        self.next_call += 1;
        self.next_call
    }

    fn server_info(&self, s: usize, site: SiteId) -> ServerInfo {
        ServerInfo {
            name: server_name(site),
            client: Address {
                host: host(site),
                port: CLIENT_PORT,
            },
            receivers: self.endpoints[s].clone(),
            load: 0,
            admin: None,
        }
    }
}

impl Agent {
    fn new(now: u64) -> Agent {
        Agent {
            link: RegistrationLink::new(0),
            started_at: now,
            pending: None,
        }
    }
}

/// Why a lookup found no receiver (the node's `LookupError`).
pub(super) enum LookupFailure {
    Unreachable,
    SiteUnknown,
    NoReceivers,
}

impl std::fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LookupFailure::Unreachable => "the local locator does not answer",
            LookupFailure::SiteUnknown => "the site is not known to the local locator",
            LookupFailure::NoReceivers => "the site is known but has no receiver",
        })
    }
}

impl World {
    fn post(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.now;
        let latency = if from == to {
            self.rng.range(0, 2)
        } else {
            self.rng.range(1, LATENCY_MS_MAX)
        };
        if self.locators_cut(from, to) || self.rng.chance(self.disc.loss) {
            return;
        }
        self.disc.posts.push(Post {
            at: now + latency,
            from,
            to,
            msg,
        });
    }

    /// Whether locator calls between sites `a` and `b` are cut: a partition of the sites, or
    /// one of their locator ports only (data still flows).
    fn locators_cut(&self, a: usize, b: usize) -> bool {
        self.partitioned(a, b)
            || self
                .disc
                .cuts
                .get(&(a.min(b), a.max(b)))
                .is_some_and(|&until| until > self.now)
    }

    /// The locator calls between sites `a` and `b` are cut until `until` (a firewall on the
    /// locator port); the sites' data connections are not.
    pub(super) fn cut_locators(&mut self, a: usize, b: usize, until: u64) {
        self.disc.cuts.insert((a.min(b), a.max(b)), until);
        self.report.locator_cuts += 1;
        trace!(
            self,
            "locator calls between sites {} and {} cut until {until}",
            a + 1,
            b + 1
        );
    }

    /// A site's locator crashes: its directory is gone until it restarts `down_ms` later.
    pub(super) fn crash_locator(&mut self, l: usize, down_ms: u64) {
        let loc = &mut self.disc.locators[l];
        if loc.dir.is_none() {
            return;
        }
        loc.dir = None;
        loc.round = None;
        loc.restart_at = self.now + down_ms;
        self.report.locator_crashes += 1;
        trace!(self, "locator of site {} crashes for {down_ms} ms", l + 1);
    }

    /// The site's server stops (a crash): its agent is gone, and an embedded locator with it.
    pub(super) fn server_down(&mut self, s: usize, down_ms: u64) {
        self.disc.agents[s] = None;
        if self.disc.locators[s].embedded {
            self.crash_locator(s, down_ms);
        }
    }

    /// The site's server is back: a fresh agent registers again.
    pub(super) fn server_up(&mut self, s: usize) {
        self.disc.agents[s] = Some(Agent::new(self.now));
    }

    /// Heal: every locator restarts now if it is down, and every server's calls go through.
    pub(super) fn heal_discovery(&mut self) {
        let now = self.now;
        for l in &mut self.disc.locators {
            l.restart_at = l.restart_at.min(now);
        }
        self.disc.silent_until.iter_mut().for_each(|t| *t = 0);
        self.disc.cuts.clear();
    }

    /// One step of every locator and agent: restarts, messages due, expiry and aging out,
    /// exchange rounds, registration calls; then the directory invariants.
    pub(super) fn discovery_step(&mut self) -> Result<(), String> {
        let now = self.now;
        for l in 0..self.disc.locators.len() {
            let loc = &self.disc.locators[l];
            // An embedded locator restarts with its server.
            let can = !loc.embedded || self.sites[l].up;
            if loc.dir.is_none() && now >= loc.restart_at && can {
                let site = self.sites[l].id;
                self.disc.start_locator(l, site, now);
                trace!(
                    self,
                    "locator of site {site} starts with an empty directory"
                );
            }
        }
        let (due, rest): (Vec<Post>, Vec<Post>) = std::mem::take(&mut self.disc.posts)
            .into_iter()
            .partition(|p| p.at <= now);
        self.disc.posts = rest;
        for p in due {
            // A message in flight when a partition starts is lost with the connection.
            if !self.locators_cut(p.from, p.to) {
                self.deliver(p)?;
            }
        }
        for l in 0..self.disc.locators.len() {
            self.locator_step(l)?;
        }
        for s in 0..self.disc.agents.len() {
            self.agent_step(s);
        }
        self.check_directories()
    }

    fn deliver(&mut self, p: Post) -> Result<(), String> {
        let now = self.now;
        let to = p.to;
        match p.msg {
            Msg::AgentReply { call, outcome } => {
                let Some(agent) = self.disc.agents[to].as_mut() else {
                    return Ok(());
                };
                let Some((id, made, _)) = agent.pending else {
                    return Ok(());
                };
                if id != call {
                    return Ok(());
                }
                agent.pending = None;
                let notice = agent
                    .link
                    .handle_outcome(now - agent.started_at, made, outcome);
                self.notice(to, notice);
            }
            Msg::Register { call, info } => {
                let site = self.sites[to].id;
                let lnow = now - self.disc.locators[to].started_at;
                let Some(dir) = self.disc.locators[to].dir.as_mut() else {
                    return Ok(());
                };
                let outcome = match dir.handle_register(lnow, info) {
                    Ok(r) => {
                        self.disc.heard[to] = Some(now);
                        trace!(
                            self,
                            "locator of site {site}: server{site} registers ({r:?})"
                        );
                        CallOutcome::Accepted {
                            heartbeat_interval_ms: self.disc.locators[to]
                                .dir
                                .as_ref()
                                .expect("up")
                                .heartbeat_interval_ms(),
                        }
                    }
                    Err(e) => {
                        return Err(format!("locator of site {site} refuses a register: {e}"));
                    }
                };
                self.post(to, to, Msg::AgentReply { call, outcome });
            }
            Msg::Heartbeat { call, name } => {
                let lnow = now - self.disc.locators[to].started_at;
                let Some(dir) = self.disc.locators[to].dir.as_mut() else {
                    return Ok(());
                };
                let outcome = match dir.handle_heartbeat(lnow, &name, 0) {
                    Ok(()) => {
                        self.disc.heard[to] = Some(now);
                        CallOutcome::Accepted {
                            heartbeat_interval_ms: dir.heartbeat_interval_ms(),
                        }
                    }
                    Err(DirectoryError::UnknownServer(_)) => CallOutcome::UnknownServer,
                    Err(_) => CallOutcome::Refused,
                };
                self.post(to, to, Msg::AgentReply { call, outcome });
            }
            Msg::Exchange { call, from, map } => {
                let loc = &mut self.disc.locators[to];
                let lnow = now - loc.started_at;
                let Some(dir) = loc.dir.as_mut() else {
                    return Ok(());
                };
                let merged = dir.handle_exchange_request(lnow, from, &map).map_err(|e| {
                    format!(
                        "locator of site {} refuses the map of site {from}'s locator: {e}",
                        to + 1
                    )
                })?;
                let (site, answer) = (self.sites[to].id, dir.export(lnow));
                self.report.exchanges += 1;
                if merged.changed > 0 {
                    trace!(
                        self,
                        "locator of site {site} takes site {from}'s map: {} changed, new sites {:?}",
                        merged.changed,
                        merged.new_sites
                    );
                }
                self.post(
                    to,
                    p.from,
                    Msg::ExchangeReply {
                        call,
                        from: site,
                        map: answer,
                    },
                );
            }
            Msg::ExchangeReply { call, from, map } => {
                let loc = &mut self.disc.locators[to];
                let (Some(dir), Some(round)) = (loc.dir.as_mut(), loc.round.as_mut()) else {
                    return Ok(());
                };
                let Some((id, _, sent_ms)) = round.call else {
                    return Ok(());
                };
                if id != call {
                    return Ok(());
                }
                round.call = None;
                // The answer's ages count from when the call left.
                let merged = dir.handle_exchange(sent_ms, from, &map).map_err(|e| {
                    format!(
                        "locator of site {} refuses the answer of site {from}'s locator: {e}",
                        to + 1
                    )
                })?;
                self.report.exchanges += 1;
                if merged.changed > 0 {
                    trace!(
                        self,
                        "locator of site {} takes site {from}'s answer: {} changed, new sites {:?}",
                        to + 1,
                        merged.changed,
                        merged.new_sites
                    );
                }
            }
        }
        Ok(())
    }

    fn notice(&mut self, s: usize, notice: Option<Notice>) {
        match notice {
            Some(Notice::Registered { interval_ms }) => {
                self.report.registrations += 1;
                trace!(
                    self,
                    "server{} registered (heartbeat every {interval_ms} ms)",
                    s + 1
                );
            }
            Some(Notice::Forgotten) => {
                self.report.forgotten += 1;
                trace!(
                    self,
                    "server{}: its locator has forgotten it: registering again",
                    s + 1
                );
            }
            Some(n) => trace!(self, "server{}: {n:?}", s + 1),
            None => {}
        }
    }

    /// Expiry, aging out and the exchange round of locator `l`.
    fn locator_step(&mut self, l: usize) -> Result<(), String> {
        let now = self.now;
        let site = self.sites[l].id;
        let loc = &mut self.disc.locators[l];
        let lnow = now - loc.started_at;
        let Some(dir) = loc.dir.as_mut() else {
            return Ok(());
        };
        let expired = dir.poll_expired(lnow);
        let aged = dir.poll_aged_out(lnow);
        // The round: one call at a time, each given up after CALL_TIMEOUT_MS.
        let mut send = None;
        if let Some(round) = loc.round.as_mut() {
            if round.call.is_some_and(|(_, deadline, _)| now >= deadline) {
                round.call = None;
            }
            if round.call.is_none() {
                match round.targets.pop_front() {
                    Some(target) => {
                        let map = round_map_aged(&round.map, lnow - round.made_ms);
                        send = Some((target, map));
                    }
                    None => {
                        loc.round = None;
                        loc.rounds.handle_round_done();
                    }
                }
            }
        } else if let Some(r) = loc.rounds.poll_round(lnow, dir) {
            loc.round = Some(Round {
                targets: r.targets.into(),
                map: r.map,
                made_ms: lnow,
                call: None,
            });
        }
        if !expired.is_empty() {
            self.report.servers_expired += expired.len() as u64;
            trace!(
                self,
                "locator of site {site} drops {expired:?}: silent for more than {} ms",
                self.disc.member_timeout_ms
            );
        }
        for gone in aged {
            self.report.remote_aged_out += gone.servers.len() as u64 + gone.locators.len() as u64;
            trace!(
                self,
                "locator of site {site} ages out site {}: servers {:?}, locators {:?}{}",
                gone.site,
                gone.servers,
                gone.locators.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                if gone.site_gone { ", site gone" } else { "" }
            );
        }
        if let Some((target, map)) = send {
            let call = self.disc.call_id();
            if let Some(round) = self.disc.locators[l].round.as_mut() {
                round.call = Some((call, now + CALL_TIMEOUT_MS, lnow));
            }
            // An address no site has (never: the map only holds real locators) is a failed call.
            if let Some(&to) = self.disc.by_address.get(&target) {
                self.post(
                    l,
                    to,
                    Msg::Exchange {
                        call,
                        from: site,
                        map,
                    },
                );
            }
        }
        Ok(())
    }

    /// Site `s`'s registration agent: gives up on an unanswered call, makes the call due.
    fn agent_step(&mut self, s: usize) {
        let now = self.now;
        let site = self.sites[s].id;
        let Some(agent) = self.disc.agents[s].as_mut() else {
            return;
        };
        let anow = now - agent.started_at;
        if let Some((_, made, deadline)) = agent.pending
            && now >= deadline
        {
            agent.pending = None;
            let notice = agent.link.handle_outcome(anow, made, CallOutcome::Failed);
            self.notice(s, notice);
        }
        let Some(agent) = self.disc.agents[s].as_mut() else {
            return;
        };
        if agent.pending.is_some() {
            return;
        }
        let Some(call) = agent.link.poll_call(anow) else {
            return;
        };
        self.disc.next_call += 1;
        let id = self.disc.next_call;
        let Some(agent) = self.disc.agents[s].as_mut() else {
            return;
        };
        agent.pending = Some((id, call, now + CALL_TIMEOUT_MS));
        if self.disc.silent_until[s] > now {
            return;
        }
        let msg = match call {
            AgentCall::Register => Msg::Register {
                call: id,
                info: self.disc.server_info(s, site),
            },
            AgentCall::Heartbeat => Msg::Heartbeat {
                call: id,
                name: server_name(site),
            },
        };
        self.post(s, s, msg);
    }

    /// What the directories promise (`strait_engine::locator`): a local server is held only
    /// while heard from within the member timeout; a remote server only while its own site has
    /// vouched for it within the remote-entry timeout, so no locator holds (and hands out) a
    /// server its own locator dropped longer ago than that, plus the network's delay on the
    /// way (ages do not count the time a map spends on the wire); and every endpoint held is
    /// one that server advertised.
    fn check_directories(&self) -> Result<(), String> {
        let now = self.now;
        // One transit (a request from the server's own locator), and a step of each poll.
        let remote_bound = self.disc.member_timeout_ms
            + self.disc.remote_timeout_ms
            + LATENCY_MS_MAX
            + 2 * STEP_MS_MAX;
        for (l, loc) in self.disc.locators.iter().enumerate() {
            let Some(dir) = loc.dir.as_ref() else {
                continue;
            };
            let site = self.sites[l].id;
            for (name, e) in &dir.local().servers {
                let heard = self.disc.heard[l].map(|h| now - h);
                if *name != server_name(site) || e.info.receivers != self.disc.endpoints[l] {
                    return Err(format!(
                        "locator of site {site} holds a server its site does not run: {name}"
                    ));
                }
                if heard.is_none_or(|ago| ago > self.disc.member_timeout_ms) {
                    return Err(format!(
                        "locator of site {site} still holds {name}, last heard {heard:?} ms ago, past its member timeout of {} ms",
                        self.disc.member_timeout_ms
                    ));
                }
            }
            for (id, remote) in dir.remote_sites() {
                let t = usize::from(id.0) - 1;
                for (name, s) in &remote.servers {
                    if *name != server_name(*id) || s.receivers != self.disc.endpoints[t] {
                        return Err(format!(
                            "locator of site {site} holds for site {id} a server it does not run: {name} {:?}",
                            s.receivers
                        ));
                    }
                    let heard = self.disc.heard[t].map(|h| now - h);
                    if heard.is_none_or(|ago| ago > remote_bound) {
                        return Err(format!(
                            "locator of site {site} still holds {name} of site {id}, last heard by its own locator {heard:?} ms ago, past the member and remote-entry timeouts ({remote_bound} ms with the wire's delay)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A client of site `s` asks the site's locator for the least-loaded server: it may only
    /// be the site's own server, registered and not dropped (the directory check holds that).
    pub(super) fn find_server(&mut self, s: usize) -> Result<(), String> {
        let site = self.sites[s].id;
        let Some(dir) = self.disc.locators[s].dir.as_mut() else {
            return Ok(());
        };
        match dir.least_loaded() {
            Some(info) if info.name != server_name(site) || info.client.host != host(site) => Err(
                format!("locator of site {site} sends a client to {}", info.name),
            ),
            Some(_) => {
                self.report.clients_placed += 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// What sender `i` on shard `h` of site `s` gets when it asks its site's locator for the
    /// receivers of its target site, on its `attempt`-th try: the receiver (as site index and
    /// shard) the node's choice picks, or why there is none.
    pub(super) fn lookup(
        &mut self,
        s: usize,
        h: usize,
        target: SiteId,
        attempt: usize,
    ) -> Result<(usize, usize), LookupFailure> {
        let Some(dir) = self.disc.locators[s].dir.as_ref() else {
            return Err(LookupFailure::Unreachable);
        };
        let endpoints = dir.receivers_of(target).ok_or(LookupFailure::SiteUnknown)?;
        let table = &self.sites[s].table;
        let mine = |b| table.shard_of(b) == Some(ShardId(h as u16));
        let chosen =
            choose_receiver(&endpoints, mine, attempt).ok_or(LookupFailure::NoReceivers)?;
        let t = usize::from(target.0) - 1;
        let shard = self.disc.endpoints[t]
            .iter()
            .position(|e| e == chosen)
            .unwrap_or(usize::MAX);
        Ok((t, shard))
    }
}
