//! # strait-sim: Strait's WAN replication under one seed
//!
//! Several sites, each with several shards, run the real logic of Strait on one thread: the
//! sender queues ([`strait_queue::queue::SenderQueue`] over [`strait_queue::mem::MemDisk`],
//! in memory with overflow to segments, or persistent), the connection state machines
//! ([`strait_net::wire::SenderConn`], [`strait_net::wire::ReceiverConn`]) and the frame codec,
//! the pure link, receive and write steps ([`strait_engine::link`], [`strait_engine::receive`],
//! [`strait_engine::write`]), the region store, the conflict rule, dedupe, the loop rule and the
//! region log's restore ([`strait_engine::apply`]), the locators' directories, exchanges and
//! registrations ([`strait_engine::locator`], [`strait_engine::registration`]), and sender
//! operations, serial queue layouts and START CLEAN ([`strait_engine::sender`]). Everything
//! else is simulated from the seed: the clock, the network (latency, writes split into pieces,
//! resets, partitions, late bytes of closed connections, lost locator calls), process crashes
//! and restarts (a power loss on persistent queues; locators of their own), full disks, server
//! blackouts, operators pausing, stopping and starting senders and receivers, the topology and
//! the workload. After the faults heal and the load stops, the checkers assert the
//! invariants `docs/testing.md` lists.
//!
//! | item | what it is |
//! |---|---|
//! | [`run`] | one seed: build a world, load it with faults, heal, quiesce, check |
//! | [`Report`] | what a passing seed did |
//! | [`Failure`] | a broken invariant, with the seed and the trace that replays it |
//! | [`Topology`] | mesh, ring, two-way ring, ring with a chord, converging paths, star |

mod rng;
mod world;

pub use rng::Rng;
pub use world::{Failure, Report, Topology, run};
