//! A server's registration with one locator, as a plain state machine: register, heartbeat at
//! the interval the locator asks for, register again when the locator has forgotten the server
//! (it restarted, or dropped the server after its member timeout), and retry an unreachable or
//! refusing locator every [`REGISTER_RETRY_MS`]. The node's registration agent (one plain
//! thread per locator) makes the calls over HTTP; the simulator makes them over its simulated
//! network. Time comes in as milliseconds of the caller's clock.
//!
//! | item | what it is |
//! |---|---|
//! | [`RegistrationLink`] | one server's standing with one locator: registered or not, when to call next |
//! | [`AgentCall`] | the call [`RegistrationLink::poll_call`] says is due |
//! | [`CallOutcome`] | how the call ended, fed to [`RegistrationLink::handle_outcome`] |
//! | [`Notice`] | a change worth a log line, returned by `handle_outcome` |

/// How often the agent tries a locator it cannot reach or that refused it.
pub const REGISTER_RETRY_MS: u64 = 1_000;
/// The shortest heartbeat interval the agent accepts from a locator.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;
const _: () = assert!(HEARTBEAT_INTERVAL_MS_MIN <= crate::locator::HEARTBEAT_INTERVAL_MS_DEFAULT);

/// The call that is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentCall {
    /// Register (or register again) with the server's whole description.
    Register,
    /// Report the load; the locator refreshes the server's last-heard time.
    Heartbeat,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The locator took it and asks for a heartbeat every `heartbeat_interval_ms`.
    Accepted { heartbeat_interval_ms: u64 },
    /// The locator does not know the server (a heartbeat after a locator restart or expiry).
    UnknownServer,
    /// The locator refused the call for another reason (a bad name, a full directory) or
    /// answered with something unreadable.
    Refused,
    /// No answer: the locator is down, unreachable, or the call timed out.
    Failed,
}

/// A change in the server's standing worth telling the operator about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Registered; heartbeats follow every `interval_ms`.
    Registered { interval_ms: u64 },
    /// The locator had forgotten the server: it registers again at once.
    Forgotten,
    /// The first failure after the locator was reachable: retried every [`REGISTER_RETRY_MS`].
    Unreachable,
    /// The first success after failures.
    ReachableAgain,
}

/// One server's standing with one locator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationLink {
    registered: bool,
    /// Whether the last call got through; notices are given when this changes.
    reachable: bool,
    interval_ms: u64,
    next_ms: u64,
}

impl RegistrationLink {
    /// A server that has not registered yet; its first call is due at `now_ms`.
    pub fn new(now_ms: u64) -> RegistrationLink {
        RegistrationLink {
            registered: false,
            reachable: true,
            interval_ms: crate::locator::HEARTBEAT_INTERVAL_MS_DEFAULT,
            next_ms: now_ms,
        }
    }

    /// Whether the locator holds the server as far as the last answer said.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// When the next call is due.
    pub fn next_ms(&self) -> u64 {
        self.next_ms
    }

    /// The heartbeat interval in force.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The call due at `now_ms`, if any: a register until the locator has taken one, then
    /// heartbeats.
    pub fn poll_call(&self, now_ms: u64) -> Option<AgentCall> {
        (now_ms >= self.next_ms).then_some(if self.registered {
            AgentCall::Heartbeat
        } else {
            AgentCall::Register
        })
    }

    /// The server's description changed (its receiver endpoints came or went): register again
    /// at once, so the locator replaces the entry.
    pub fn register_again(&mut self, now_ms: u64) {
        self.registered = false;
        self.next_ms = now_ms;
    }

    /// How `call`, made at `now_ms` (or ended then), turned out.
    pub fn handle_outcome(
        &mut self,
        now_ms: u64,
        call: AgentCall,
        outcome: CallOutcome,
    ) -> Option<Notice> {
        match outcome {
            CallOutcome::Accepted {
                heartbeat_interval_ms,
            } => {
                self.interval_ms = heartbeat_interval_ms.max(HEARTBEAT_INTERVAL_MS_MIN);
                self.next_ms = now_ms.saturating_add(self.interval_ms);
                let again = !std::mem::replace(&mut self.reachable, true);
                match call {
                    AgentCall::Register => {
                        self.registered = true;
                        Some(Notice::Registered {
                            interval_ms: self.interval_ms,
                        })
                    }
                    AgentCall::Heartbeat => again.then_some(Notice::ReachableAgain),
                }
            }
            CallOutcome::UnknownServer if call == AgentCall::Heartbeat => {
                self.registered = false;
                self.reachable = true;
                self.next_ms = now_ms;
                Some(Notice::Forgotten)
            }
            CallOutcome::UnknownServer | CallOutcome::Refused | CallOutcome::Failed => {
                // A refusal (a bad name, a full directory) is retried from a fresh register; a
                // heartbeat that got no answer is tried again as a heartbeat.
                if outcome != CallOutcome::Failed {
                    self.registered = false;
                }
                self.next_ms = now_ms.saturating_add(REGISTER_RETRY_MS);
                std::mem::replace(&mut self.reachable, false).then_some(Notice::Unreachable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: CallOutcome = CallOutcome::Accepted {
        heartbeat_interval_ms: 500,
    };

    #[test]
    fn registers_then_heartbeats_at_the_locators_interval() {
        let mut l = RegistrationLink::new(100);
        assert_eq!(l.poll_call(99), None);
        assert_eq!(l.poll_call(100), Some(AgentCall::Register));
        assert_eq!(
            l.handle_outcome(100, AgentCall::Register, OK),
            Some(Notice::Registered { interval_ms: 500 })
        );
        assert!(l.registered());
        assert_eq!(l.poll_call(599), None);
        assert_eq!(l.poll_call(600), Some(AgentCall::Heartbeat));
        assert_eq!(l.handle_outcome(600, AgentCall::Heartbeat, OK), None);
        assert_eq!(l.next_ms(), 1_100);
    }

    #[test]
    fn a_forgotten_server_registers_again_at_once() {
        let mut l = RegistrationLink::new(0);
        l.handle_outcome(0, AgentCall::Register, OK);
        let n = l.handle_outcome(500, AgentCall::Heartbeat, CallOutcome::UnknownServer);
        assert_eq!(n, Some(Notice::Forgotten));
        assert_eq!(l.poll_call(500), Some(AgentCall::Register));
    }

    #[test]
    fn failures_are_retried_and_noticed_once() {
        let mut l = RegistrationLink::new(0);
        l.handle_outcome(0, AgentCall::Register, OK);
        let f = CallOutcome::Failed;
        assert_eq!(
            l.handle_outcome(500, AgentCall::Heartbeat, f),
            Some(Notice::Unreachable)
        );
        // Still registered as far as anyone knows: the next call is a heartbeat.
        assert_eq!(l.poll_call(1_500), Some(AgentCall::Heartbeat));
        assert_eq!(l.handle_outcome(1_500, AgentCall::Heartbeat, f), None);
        assert_eq!(
            l.handle_outcome(2_500, AgentCall::Heartbeat, OK),
            Some(Notice::ReachableAgain)
        );
        // A refusal starts over from a register.
        l.handle_outcome(3_000, AgentCall::Heartbeat, CallOutcome::Refused);
        assert!(!l.registered());
        assert_eq!(l.poll_call(4_000), Some(AgentCall::Register));
    }

    #[test]
    fn an_interval_below_the_floor_is_raised_and_a_change_registers_again() {
        let mut l = RegistrationLink::new(0);
        let fast = CallOutcome::Accepted {
            heartbeat_interval_ms: 1,
        };
        l.handle_outcome(0, AgentCall::Register, fast);
        assert_eq!(l.interval_ms(), HEARTBEAT_INTERVAL_MS_MIN);
        l.register_again(3);
        assert_eq!(l.poll_call(3), Some(AgentCall::Register));
    }
}
