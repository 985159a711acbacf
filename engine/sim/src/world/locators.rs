//! Discovery in the simulated world: one or two locators per site (each a process of its own,
//! or the first embedded in the site's server), running the real directory ([`Directory`]: register, heartbeat, expiry,
//! the exchange of site maps with [`ExchangeRounds`], aging out) on its own clock, which starts
//! at 0 at every (re)start as the node's does. Each site's server registers and heartbeats with
//! each of its site's locators through the real [`RegistrationLink`] (an agent per locator, as
//! the node); locators exchange their maps with their
//! `remote-locators` and, transitively, every locator they learn of. Every call is a message
//! on the simulated network: delayed, sometimes lost, cut by partitions, lost when its
//! destination is down; a call with no answer fails after [`CALL_TIMEOUT_MS`], as the node's
//! HTTP clients do. A sender finds a remote site's receivers only by asking its own site's
//! locators in turn ([`World::lookup`], the node's [`first_receivers`]).
//!
//! | item | what it is |
//! |---|---|
//! | [`Discovery`] | every locator, every server's registration agent, the messages in flight, and the ground truth the checks compare against |
//! | [`Locator`] | one locator process: its directory (gone while it is down) and its exchange round |
//! | [`Agent`] | a server's registration agent for one locator (gone while the site is down) |

use std::collections::{BTreeMap, HashMap, VecDeque};

use strait_engine::bucket::ShardId;
use strait_engine::locator::{
    Address, Directory, DirectoryError, ExchangeRounds, LocatorAnswer, MemberName, NoReceiver,
    ReceiverEndpoint, ServerInfo, SiteMap, choose_receiver, first_receivers, round_map_aged,
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

/// Most locators a site has.
const LOCATORS_PER_SITE_MAX: u64 = 2;

/// One locator process.
#[derive(Debug)]
pub(super) struct Locator {
    /// The site it serves (an index into the world's sites).
    site: usize,
    name: MemberName,
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

/// A site's server's registration agent for one locator (the agent of locator `l` is
/// `agents[l]`).
#[derive(Debug)]
pub(super) struct Agent {
    link: RegistrationLink,
    started_at: u64,
    /// (call id, the call, when it gives up in simulation ms).
    pending: Option<(u64, AgentCall, u64)>,
    /// Whether its registration lists the receiver's endpoints (the receiver is running).
    advertising: bool,
}

#[derive(Debug)]
enum Msg {
    Register {
        call: u64,
        loc: usize,
        info: ServerInfo,
    },
    Heartbeat {
        call: u64,
        loc: usize,
        name: MemberName,
    },
    AgentReply {
        call: u64,
        agent: usize,
        outcome: CallOutcome,
    },
    Exchange {
        call: u64,
        from_loc: usize,
        to_loc: usize,
        from: SiteId,
        map: SiteMap,
    },
    ExchangeReply {
        call: u64,
        to_loc: usize,
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
    /// Each site's locators, in the order its senders ask them.
    by_site: Vec<Vec<usize>>,
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
    /// Ground truth: when each locator last took a register or heartbeat of its site's server.
    heard: Vec<Option<u64>>,
    /// Ground truth: when each locator last took one while it held the server's endpoints.
    heard_advertising: Vec<Option<u64>>,
    /// A server's calls to its locator are lost until then (a stalled agent, a firewall).
    pub(super) silent_until: Vec<u64>,
    /// Site pairs (lower index first) whose locators cannot call each other until a time.
    cuts: BTreeMap<(usize, usize), u64>,
}

/// Whether `dir` holds its site's server with receiver endpoints.
fn advertises(dir: &Directory, site: SiteId) -> bool {
    dir.local()
        .servers
        .get(&server_name(site))
        .is_some_and(|e| !e.info.receivers.is_empty())
}

fn server_name(site: SiteId) -> MemberName {
    MemberName(format!("server{site}"))
}

fn host(site: SiteId) -> String {
    format!("site{site}")
}

impl Discovery {
    /// One or two locators per site, with `remote-locators` that connect every locator to
    /// every other (a random tree over the locators, each linked to another site's, plus random
    /// extra links), and member and remote-entry timeouts, exchange interval and message loss
    /// drawn from the seed.
    pub(super) fn new(rng: &mut Rng, sites: &[Site]) -> Discovery {
        let n = sites.len();
        let member_timeout_ms = rng.range(300, 3_000);
        let interval_ms = rng.range(50, 1_000);
        let remote_timeout_ms = (interval_ms * rng.range(3, 6)).max(member_timeout_ms);
        let per_site: Vec<u64> = (0..n)
            .map(|_| rng.range(1, LOCATORS_PER_SITE_MAX))
            .collect();
        // The first locators of every site, then the second ones.
        let order: Vec<(usize, u64)> = (0..LOCATORS_PER_SITE_MAX)
            .flat_map(|k| (0..n).map(move |i| (i, k)))
            .filter(|&(i, k)| k < per_site[i])
            .collect();
        let mut locators: Vec<Locator> = Vec::new();
        for (l, &(i, k)) in order.iter().enumerate() {
            let site = sites[i].id;
            let embedded = k == 0 && rng.chance(333);
            let other: Vec<usize> = (0..l).filter(|&j| order[j].0 != i).collect();
            let mut links = Vec::new();
            if !other.is_empty() {
                links.push(other[rng.below(other.len())]);
            }
            let extra = rng.below(l.max(1));
            if extra < l && order[extra].0 != i && rng.chance(300) && !links.contains(&extra) {
                links.push(extra);
            }
            let remote = links.iter().map(|&j| locators[j].address.clone()).collect();
            locators.push(Locator {
                site: i,
                name: MemberName(format!("locator{site}-{}", k + 1)),
                dir: None,
                address: Address {
                    host: if embedded {
                        host(site)
                    } else {
                        format!("locator{site}-{}", k + 1)
                    },
                    port: LOCATOR_PORT,
                },
                remote,
                rounds: ExchangeRounds::new(interval_ms),
                round: None,
                started_at: 0,
                restart_at: 0,
                embedded,
            });
        }
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
        let count = locators.len();
        let mut d = Discovery {
            by_address: (0..count)
                .map(|l| (locators[l].address.clone(), l))
                .collect(),
            by_site: (0..n)
                .map(|i| (0..count).filter(|&l| locators[l].site == i).collect())
                .collect(),
            locators,
            agents: (0..count).map(|_| Some(Agent::new(0))).collect(),
            posts: Vec::new(),
            next_call: 0,
            member_timeout_ms,
            remote_timeout_ms,
            interval_ms,
            loss: rng.range(0, 50),
            endpoints,
            heard: vec![None; count],
            heard_advertising: vec![None; count],
            silent_until: vec![0; n],
            cuts: BTreeMap::new(),
        };
        for l in 0..count {
            let site = sites[d.locators[l].site].id;
            d.start_locator(l, site, 0);
        }
        d
    }

    /// Sites with more than one locator.
    pub(super) fn sites_with_two_locators(&self) -> u64 {
        self.by_site.iter().filter(|l| l.len() > 1).count() as u64
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
            .with_locator_name(l.name.clone())
            .with_remote_entry_timeout_ms(self.remote_timeout_ms),
        );
        l.rounds = ExchangeRounds::new(self.interval_ms);
        l.round = None;
        l.started_at = now;
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "locators: member timeout {} ms, exchange every {} ms, remote entries {} ms, {} per mille of messages lost; {:?}",
            self.member_timeout_ms,
            self.interval_ms,
            self.remote_timeout_ms,
            self.loss,
            self.locators
                .iter()
                .map(|l| format!(
                    "{} at {}{} -> {:?}",
                    l.name,
                    l.address.host,
                    if l.embedded { " (embedded)" } else { "" },
                    l.remote.iter().map(|a| &a.host).collect::<Vec<_>>()
                ))
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

    /// What site `s`'s server registers: its receiver's endpoints only while it advertises
    /// them (the receiver is running).
    fn server_info(&self, s: usize, site: SiteId, advertising: bool) -> ServerInfo {
        ServerInfo {
            name: server_name(site),
            client: Address {
                host: host(site),
                port: CLIENT_PORT,
            },
            receivers: if advertising {
                self.endpoints[s].clone()
            } else {
                Vec::new()
            },
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
            advertising: true,
        }
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
        let name = loc.name.clone();
        trace!(self, "{name} crashes for {down_ms} ms");
    }

    /// The site's server stops (a crash): its agents are gone, and an embedded locator with it.
    pub(super) fn server_down(&mut self, s: usize, down_ms: u64) {
        for l in self.disc.by_site[s].clone() {
            self.disc.agents[l] = None;
            if self.disc.locators[l].embedded {
                self.crash_locator(l, down_ms);
            }
        }
    }

    /// The site's server is back: fresh agents register again.
    pub(super) fn server_up(&mut self, s: usize) {
        for &l in &self.disc.by_site[s] {
            self.disc.agents[l] = Some(Agent::new(self.now));
        }
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
            let can = !loc.embedded || self.sites[loc.site].up;
            if loc.dir.is_none() && now >= loc.restart_at && can {
                let (site, name) = (self.sites[loc.site].id, loc.name.clone());
                self.disc.start_locator(l, site, now);
                trace!(self, "{name} starts with an empty directory");
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
            Msg::AgentReply {
                call,
                agent: a,
                outcome,
            } => {
                let Some(agent) = self.disc.agents[a].as_mut() else {
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
                self.notice(a, notice);
            }
            Msg::Register { call, loc, info } => {
                let site = self.sites[to].id;
                let l = &mut self.disc.locators[loc];
                let (lnow, name) = (now - l.started_at, l.name.clone());
                let Some(dir) = l.dir.as_mut() else {
                    return Ok(());
                };
                let registered = dir
                    .handle_register(lnow, info)
                    .map_err(|e| format!("{name} refuses a register: {e}"))?;
                let outcome = CallOutcome::Accepted {
                    heartbeat_interval_ms: dir.heartbeat_interval_ms(),
                };
                let advertising = advertises(dir, site);
                self.disc.heard[loc] = Some(now);
                if advertising {
                    self.disc.heard_advertising[loc] = Some(now);
                }
                trace!(self, "{name}: server{site} registers ({registered:?})");
                self.answer_agent(to, call, loc, outcome);
            }
            Msg::Heartbeat { call, loc, name } => {
                let l = &mut self.disc.locators[loc];
                let lnow = now - l.started_at;
                let Some(dir) = l.dir.as_mut() else {
                    return Ok(());
                };
                let outcome = match dir.handle_heartbeat(lnow, &name, 0) {
                    Ok(()) => {
                        self.disc.heard[loc] = Some(now);
                        if advertises(dir, self.sites[to].id) {
                            self.disc.heard_advertising[loc] = Some(now);
                        }
                        CallOutcome::Accepted {
                            heartbeat_interval_ms: dir.heartbeat_interval_ms(),
                        }
                    }
                    Err(DirectoryError::UnknownServer(_)) => CallOutcome::UnknownServer,
                    Err(_) => CallOutcome::Refused,
                };
                self.answer_agent(to, call, loc, outcome);
            }
            Msg::Exchange {
                call,
                from_loc,
                to_loc,
                from,
                map,
            } => {
                let l = &mut self.disc.locators[to_loc];
                let (lnow, name) = (now - l.started_at, l.name.clone());
                let Some(dir) = l.dir.as_mut() else {
                    return Ok(());
                };
                let merged = dir
                    .handle_exchange_request(lnow, from, &map)
                    .map_err(|e| format!("{name} refuses the map of a site {from} locator: {e}"))?;
                let (site, answer) = (self.sites[to].id, dir.export(lnow));
                self.report.exchanges += 1;
                if merged.changed > 0 {
                    trace!(
                        self,
                        "{name} takes site {from}'s map: {} changed, new sites {:?}",
                        merged.changed,
                        merged.new_sites
                    );
                }
                self.post(
                    to,
                    p.from,
                    Msg::ExchangeReply {
                        call,
                        to_loc: from_loc,
                        from: site,
                        map: answer,
                    },
                );
            }
            Msg::ExchangeReply {
                call,
                to_loc,
                from,
                map,
            } => {
                let l = &mut self.disc.locators[to_loc];
                let name = l.name.clone();
                let (Some(dir), Some(round)) = (l.dir.as_mut(), l.round.as_mut()) else {
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
                    format!("{name} refuses the answer of a site {from} locator: {e}")
                })?;
                self.report.exchanges += 1;
                if merged.changed > 0 {
                    trace!(
                        self,
                        "{name} takes site {from}'s answer: {} changed, new sites {:?}",
                        merged.changed,
                        merged.new_sites
                    );
                }
            }
        }
        Ok(())
    }

    /// Locator `loc` (of site `s`) answers its agent's call.
    fn answer_agent(&mut self, s: usize, call: u64, loc: usize, outcome: CallOutcome) {
        let reply = Msg::AgentReply {
            call,
            agent: loc,
            outcome,
        };
        self.post(s, s, reply);
    }

    fn notice(&mut self, agent: usize, notice: Option<Notice>) {
        let (site, name) = {
            let l = &self.disc.locators[agent];
            (self.sites[l.site].id, l.name.clone())
        };
        match notice {
            Some(Notice::Registered { interval_ms }) => {
                self.report.registrations += 1;
                trace!(
                    self,
                    "server{site} registered with {name} (heartbeat every {interval_ms} ms)"
                );
            }
            Some(Notice::Forgotten) => {
                self.report.forgotten += 1;
                trace!(
                    self,
                    "server{site}: {name} has forgotten it: registering again"
                );
            }
            Some(n) => trace!(self, "server{site} with {name}: {n:?}"),
            None => {}
        }
    }

    /// Expiry, aging out and the exchange round of locator `l`.
    fn locator_step(&mut self, l: usize) -> Result<(), String> {
        let now = self.now;
        let loc = &mut self.disc.locators[l];
        let (s, name) = (loc.site, loc.name.clone());
        let site = self.sites[s].id;
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
                "{name} drops {expired:?}: silent for more than {} ms", self.disc.member_timeout_ms
            );
        }
        for gone in aged {
            self.report.remote_aged_out += gone.servers.len() as u64 + gone.locators.len() as u64;
            trace!(
                self,
                "{name} ages out site {}: servers {:?}, locators {:?}{}",
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
            // An address no locator has (never: maps only hold real locators) is a failed call.
            if let Some(&to_loc) = self.disc.by_address.get(&target) {
                let to = self.disc.locators[to_loc].site;
                self.post(
                    s,
                    to,
                    Msg::Exchange {
                        call,
                        from_loc: l,
                        to_loc,
                        from: site,
                        map,
                    },
                );
            }
        }
        Ok(())
    }

    /// The registration agent of locator `l`'s site's server with it: gives up on an
    /// unanswered call, makes the call due.
    fn agent_step(&mut self, l: usize) {
        let now = self.now;
        let s = self.disc.locators[l].site;
        let site = self.sites[s].id;
        let Some(agent) = self.disc.agents[l].as_mut() else {
            return;
        };
        let anow = now - agent.started_at;
        if let Some((_, made, deadline)) = agent.pending
            && now >= deadline
        {
            agent.pending = None;
            let notice = agent.link.handle_outcome(anow, made, CallOutcome::Failed);
            self.notice(l, notice);
        }
        let running = self.sites[s].receiver_running;
        let Some(agent) = self.disc.agents[l].as_mut() else {
            return;
        };
        if agent.pending.is_some() {
            return;
        }
        // As the node's agent between calls: the receiver started or stopped, so register
        // again at once with or without its endpoints.
        if agent.advertising != running {
            agent.advertising = running;
            agent.link.register_again(anow);
        }
        let advertising = agent.advertising;
        let Some(call) = agent.link.poll_call(anow) else {
            return;
        };
        self.disc.next_call += 1;
        let id = self.disc.next_call;
        let Some(agent) = self.disc.agents[l].as_mut() else {
            return;
        };
        agent.pending = Some((id, call, now + CALL_TIMEOUT_MS));
        if self.disc.silent_until[s] > now {
            return;
        }
        let msg = match call {
            AgentCall::Register => Msg::Register {
                call: id,
                loc: l,
                info: self.disc.server_info(s, site, advertising),
            },
            AgentCall::Heartbeat => Msg::Heartbeat {
                call: id,
                loc: l,
                name: server_name(site),
            },
        };
        self.post(s, s, msg);
    }

    /// What the directories promise (`strait_engine::locator`): a local server is held only
    /// while heard from within the member timeout; a remote server only while its own site has
    /// vouched for it within the remote-entry timeout, so no locator holds (and hands out) a
    /// server its own site's locators dropped longer ago than that, plus one transit (a
    /// request's ages do not count the time it spends on the wire); and every endpoint held is
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
            let (s, name) = (loc.site, &loc.name);
            let site = self.sites[s].id;
            for (server, e) in &dir.local().servers {
                let heard = self.disc.heard[l].map(|h| now - h);
                let receivers = &e.info.receivers;
                if *server != server_name(site)
                    || !(receivers.is_empty() || *receivers == self.disc.endpoints[s])
                {
                    return Err(format!(
                        "{name} holds a server its site does not run: {server}"
                    ));
                }
                if heard.is_none_or(|ago| ago > self.disc.member_timeout_ms) {
                    return Err(format!(
                        "{name} still holds {server}, last heard {heard:?} ms ago, past its member timeout of {} ms",
                        self.disc.member_timeout_ms
                    ));
                }
            }
            for (id, remote) in dir.remote_sites() {
                let t = usize::from(id.0) - 1;
                // The last time any of the site's locators heard its server while it held the
                // server's endpoints (only then does it vouch for them).
                let last = self.disc.by_site[t]
                    .iter()
                    .filter_map(|&x| self.disc.heard_advertising[x])
                    .max();
                for (server, r) in &remote.servers {
                    if *server != server_name(*id) || r.receivers != self.disc.endpoints[t] {
                        return Err(format!(
                            "{name} holds for site {id} a server it does not run: {server} {:?}",
                            r.receivers
                        ));
                    }
                    let heard = last.map(|h| now - h);
                    if heard.is_none_or(|ago| ago > remote_bound) {
                        return Err(format!(
                            "{name} still holds {server} of site {id}, last heard by its own site's locators {heard:?} ms ago, past the member and remote-entry timeouts ({remote_bound} ms with the wire's delay)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A client of site `s` asks the site's first locator that is up for the least-loaded
    /// server: it may only be the site's own server, registered and not dropped (the directory
    /// check holds that).
    pub(super) fn find_server(&mut self, s: usize) -> Result<(), String> {
        let site = self.sites[s].id;
        let Some(&l) = self.disc.by_site[s]
            .iter()
            .find(|&&l| self.disc.locators[l].dir.is_some())
        else {
            return Ok(());
        };
        let loc = &mut self.disc.locators[l];
        let Some(dir) = loc.dir.as_mut() else {
            return Ok(());
        };
        match dir.least_loaded() {
            Some(info) if info.name != server_name(site) || info.client.host != host(site) => {
                Err(format!("{} sends a client to {}", loc.name, info.name))
            }
            Some(_) => {
                self.report.clients_placed += 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// What sender `i` on shard `h` of site `s` gets when it asks its site's locators in turn
    /// for the receivers of its target site (the node's `first_receivers`), on its
    /// `attempt`-th try: the receiver (as site index and shard) the node's choice picks, or why
    /// there is none.
    pub(super) fn lookup(
        &mut self,
        s: usize,
        h: usize,
        target: SiteId,
        attempt: usize,
    ) -> Result<(usize, usize), NoReceiver> {
        let answers = self.disc.by_site[s].iter().map(|&l| {
            let loc = &self.disc.locators[l];
            let answer = match loc.dir.as_ref() {
                None => LocatorAnswer::Failed(format!("{} is down", loc.name)),
                Some(dir) => match dir.receivers_of(target) {
                    None => LocatorAnswer::SiteUnknown,
                    Some(r) => LocatorAnswer::Receivers(r),
                },
            };
            (loc.name.0.clone(), answer)
        });
        let endpoints = first_receivers(answers)?;
        let table = &self.sites[s].table;
        let mine = |b| table.shard_of(b) == Some(ShardId(h as u16));
        let Some(chosen) = choose_receiver(&endpoints, mine, attempt) else {
            return Err(NoReceiver::Unreachable {
                reasons: Vec::new(),
            });
        };
        let t = usize::from(target.0) - 1;
        let shard = self.disc.endpoints[t]
            .iter()
            .position(|e| e == chosen)
            .unwrap_or(usize::MAX);
        Ok((t, shard))
    }
}
