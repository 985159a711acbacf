//! Replication across NAT (`docs/nat.md`, `examples/nat/`), with real `strait` processes in
//! network namespaces the test creates and deletes:
//!
//! ```text
//!  site 1 (home)           router 1 (NAT)              router 2 (cloud edge)      site 2 (VM)
//!  h1 192.168.201.2 ── lan 192.168.201.1 │ wan 10.201.0.1 ── wan 10.201.0.2 │ lan 192.168.202.1 ── h2 192.168.202.2
//! ```
//!
//! 10.201.0.0/24 is the "public" network; each router's default route is the other router.
//! Router 1 masquerades site 1's connections; router 2 masquerades site 2's and forwards
//! (DNAT) public 10.201.0.2's locator port and receiver port range to site 2. Each router
//! silently drops a new connection from the public side that it did not forward, as a cloud's
//! edge does, so a private address of the other site is a black hole. Needs root,
//! `ip` (iproute2) and `iptables` (either backend); without them each test prints why and
//! passes without running. The harness is in `common/mod.rs`.

mod common;

use common::*;
use std::io::Write;
use std::process::Command;

const PUBLIC_1: &str = "10.201.0.1";
const PUBLIC_2: &str = "10.201.0.2";
const PRIVATE_1: &str = "192.168.201.2";
const PRIVATE_2: &str = "192.168.202.2";
/// Inside its namespace each site uses Geode's default ports, as on its own machine.
const LOCATOR_PORT: u16 = 10334;
const CLIENT_PORT: u16 = 40404;
const RECEIVER_PORTS: (u16, u16) = (5000, 5007);
/// Namespaces of this test binary are named `stnat<pid>-<n>-<role>`.
const PREFIX: &str = "stnat";

/// The four namespaces and their links; deletes them when dropped.
struct Lab {
    name: String,
    iptables: &'static str,
}

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("`{}`: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Prints why the test does not run: uncaptured, so `cargo test` shows it.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED (replication across NAT): {why}");
}

impl Lab {
    /// Builds the topology above, or says why it cannot (and returns `None`).
    fn new() -> Option<Lab> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if run(&["ip", "-V"]).is_err() {
            skip("`ip` (iproute2) is not installed");
            return None;
        }
        sweep_stale();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut lab = Lab {
            name: format!("{PREFIX}{}-{n}", std::process::id()),
            iptables: "iptables",
        };
        if let Err(e) = run(&["ip", "netns", "add", &lab.ns("h1")]) {
            skip(&format!(
                "cannot create a network namespace (needs root): {e}"
            ));
            return None;
        }
        for role in ["r1", "r2", "h2"] {
            lab.ip(&["netns", "add", &lab.ns(role)]);
        }
        // Whichever iptables works here: the default, else either backend.
        let r1 = lab.ns("r1");
        let Some(iptables) = ["iptables", "iptables-nft", "iptables-legacy"]
            .into_iter()
            .find(|t| run(&["ip", "netns", "exec", &r1, t, "-t", "nat", "-S"]).is_ok())
        else {
            skip("no working iptables (install the iptables package; either backend will do)");
            return None;
        };
        lab.iptables = iptables;
        lab.links();
        Some(lab)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    fn ip(&self, args: &[&str]) {
        let mut cmd = vec!["ip"];
        cmd.extend_from_slice(args);
        run(&cmd).unwrap();
    }

    fn exec(&self, role: &str, args: &[&str]) {
        let ns = self.ns(role);
        let mut cmd = vec!["ip", "netns", "exec", &ns];
        cmd.extend_from_slice(args);
        run(&cmd).unwrap();
    }

    fn nat(&self, role: &str, rule: &str) {
        let mut args = vec![self.iptables, "-t", "nat"];
        args.extend(rule.split_whitespace());
        self.exec(role, &args);
    }

    fn links(&self) {
        let (h1, r1, r2, h2) = (self.ns("h1"), self.ns("r1"), self.ns("r2"), self.ns("h2"));
        // Each pair is created inside its first namespace, so nothing touches the host's.
        self.ip(&[
            "-n", &h1, "link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", &r1,
        ]);
        self.ip(&[
            "-n", &r1, "link", "add", "wan", "type", "veth", "peer", "name", "wan", "netns", &r2,
        ]);
        self.ip(&[
            "-n", &r2, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &h2,
        ]);
        for (ns, dev, addr) in [
            (&h1, "eth0", "192.168.201.2/24"),
            (&r1, "lan", "192.168.201.1/24"),
            (&r1, "wan", "10.201.0.1/24"),
            (&r2, "wan", "10.201.0.2/24"),
            (&r2, "lan", "192.168.202.1/24"),
            (&h2, "eth0", "192.168.202.2/24"),
        ] {
            self.ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            self.ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        for ns in [&h1, &r1, &r2, &h2] {
            self.ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        self.ip(&["-n", &h1, "route", "add", "default", "via", "192.168.201.1"]);
        self.ip(&["-n", &h2, "route", "add", "default", "via", "192.168.202.1"]);
        for (role, lan, other) in [
            ("r1", "192.168.201.0/24", PUBLIC_2),
            ("r2", "192.168.202.0/24", PUBLIC_1),
        ] {
            self.ip(&[
                "-n",
                &self.ns(role),
                "route",
                "add",
                "default",
                "via",
                other,
            ]);
            self.exec(
                role,
                &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            );
            self.nat(
                role,
                &format!("-A POSTROUTING -s {lan} -o wan -j MASQUERADE"),
            );
            let drop = "-A FORWARD -i wan -m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -j DROP";
            let mut args = vec![self.iptables];
            args.extend(drop.split_whitespace());
            self.exec(role, &args);
        }
    }

    /// Router `role` forwards its public address's locator port and receiver port range to
    /// the site's host.
    fn forward(&self, role: &str, public: &str, private: &str) {
        let (start, end) = RECEIVER_PORTS;
        for ports in [LOCATOR_PORT.to_string(), format!("{start}:{end}")] {
            self.nat(
                role,
                &format!("-A PREROUTING -i wan -d {public} -p tcp --dport {ports} -j DNAT --to-destination {private}"),
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["h1", "r1", "r2", "h2"] {
            let _ = run(&["ip", "netns", "del", &self.ns(role)]);
        }
    }
}

/// Deletes namespaces left by a run of this test that was killed before it could clean up.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// Site `id` in namespace `h<id>` of `lab`: its locator, and its server's site.toml.
fn site(lab: &Lab, root: &std::path::Path, id: u8) -> Site {
    let mut s = Site::new(root, id);
    s.locator_port = LOCATOR_PORT;
    s.client_port = CLIENT_PORT;
    let private = if id == 1 { PRIVATE_1 } else { PRIVATE_2 };
    s.client_at = Some((lab.ns(&format!("h{id}")), private.parse().unwrap()));
    s
}

fn private(s: &Site) -> String {
    s.client_at.as_ref().unwrap().1.to_string()
}

/// Starts the site's locator in its namespace, bound to its private address; `public`: its
/// `hostname-for-clients`.
fn start_locator(s: &mut Site, remote: Option<&str>, public: Option<&str>) {
    let dir = s.dir.join("locator");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = [
        "start",
        "locator",
        "--exchange-interval-ms",
        "200",
        "--remote-entry-timeout-ms",
        "10000",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend([
        "--name".into(),
        format!("locator{}", s.id),
        "--port".into(),
        LOCATOR_PORT.to_string(),
        "--bind-address".into(),
        private(s),
        "--distributed-system-id".into(),
        s.id.to_string(),
        "--dir".into(),
        dir.display().to_string(),
    ]);
    if let Some(r) = remote {
        args.extend(["--remote-locators".into(), r.to_string()]);
    }
    if let Some(p) = public {
        args.extend(["--hostname-for-clients".into(), p.to_string()]);
    }
    let ns = s.client_at.as_ref().unwrap().0.clone();
    s.locator = Some(Proc::start_in(Some(&ns), &args, "listening on"));
}

/// Starts the site's server in its namespace: region `orders`, a parallel sender to `target`
/// when given, a receiver on [`RECEIVER_PORTS`] advertising `public` when given.
fn start_server(s: &mut Site, target: Option<u8>, public: Option<&str>) {
    let ip = private(s);
    let mut cfg = format!(
        "[server]\nname = \"server{id}\"\ndistributed-system-id = {id}\nbind-address = \"{ip}\"\nclient-port = {CLIENT_PORT}\nshards = 2\ndirectory = \"{dir}\"\nlocators = [\"{ip}:{LOCATOR_PORT}\"]\n",
        id = s.id,
        dir = s.dir.display(),
    );
    let ids = target.map(|t| format!("\"to{t}\"")).unwrap_or_default();
    cfg.push_str(&format!(
        "[[region]]\nname = \"orders\"\ntype = \"partition\"\ngateway-sender-ids = [{ids}]\n"
    ));
    if let Some(t) = target {
        cfg.push_str(&format!(
            "[[gateway-sender]]\nid = \"to{t}\"\nremote-distributed-system-id = {t}\nparallel = true\n"
        ));
    }
    cfg.push_str(&format!(
        "[gateway-receiver]\nstart-port = {}\nend-port = {}\nbind-address = \"{ip}\"\n",
        RECEIVER_PORTS.0, RECEIVER_PORTS.1
    ));
    if let Some(p) = public {
        cfg.push_str(&format!("hostname-for-senders = \"{p}\"\n"));
    }
    let path = s.dir.join("site.toml");
    std::fs::write(&path, cfg).unwrap();
    let ns = s.client_at.as_ref().unwrap().0.clone();
    let args = [
        "start".to_string(),
        "server".into(),
        "--config".into(),
        path.display().to_string(),
    ];
    s.server = Some(Proc::start_in(Some(&ns), &args, "listening on"));
}

/// Every process stops on SIGTERM with status 0: nothing hung.
fn stop_all(sites: &mut [&mut Site]) {
    for s in sites.iter_mut() {
        let server = s.server.as_mut().unwrap();
        assert!(server.terminate(), "server {} exited with an error", s.id);
    }
    for s in sites.iter_mut() {
        let locator = s.locator.as_mut().unwrap();
        assert!(locator.terminate(), "locator {} exited with an error", s.id);
    }
}

#[test]
fn with_public_names_entries_cross_the_nat_one_way_then_both_ways() {
    let _serial = common::one_at_a_time();
    let Some(lab) = Lab::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    lab.forward("r2", PUBLIC_2, PRIVATE_2);
    let mut s1 = site(&lab, tmp.path(), 1);
    let mut s2 = site(&lab, tmp.path(), 2);
    // Site 2 is reached only at its public address; site 1 names its own public address for
    // later, when its router forwards its ports too.
    start_locator(&mut s2, None, Some(PUBLIC_2));
    start_locator(
        &mut s1,
        Some(&format!("{PUBLIC_2}[{LOCATOR_PORT}]")),
        Some(PUBLIC_1),
    );
    start_server(&mut s2, Some(1), Some(PUBLIC_2));
    start_server(&mut s1, Some(2), Some(PUBLIC_1));

    // One way: site 1, behind NAT, connects out to site 2's public address.
    write(&s1, "orders", 0..200);
    wait_for("site 2 to hold site 1's writes", || {
        dbsize(&s2, "orders") == 200 && s1.queued("to2") == 0
    });
    let keys: Vec<String> = (0..200).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));

    // Site 2 cannot reach site 1 yet: its writes wait in its queue.
    write(&s2, "orders", 1000..1100);
    let line = s2
        .server
        .as_mut()
        .unwrap()
        .wait_line(&format!("cannot connect to receiver {PUBLIC_1}:"));
    assert!(line.contains("gateway sender `to1`"), "{line}");
    assert_eq!(s2.queued("to1"), 100);
    assert_eq!(s2.info_field("to1:", "distributed"), 0);
    assert_eq!(dbsize(&s1, "orders"), 200);

    // Both ways, once site 1's router forwards site 1's ports too.
    lab.forward("r1", PUBLIC_1, PRIVATE_1);
    wait_for("site 1 to hold site 2's writes", || {
        dbsize(&s1, "orders") == 300 && s2.queued("to1") == 0
    });
    let keys: Vec<String> = (0..200).chain(1000..1100).map(key).collect();
    same(&values(&s1, "orders", &keys), &values(&s2, "orders", &keys));
    assert_eq!(dbsize(&s2, "orders"), 300);
    stop_all(&mut [&mut s1, &mut s2]);
}

#[test]
fn without_public_names_the_sender_says_the_receivers_are_unreachable_and_nothing_moves() {
    let _serial = common::one_at_a_time();
    let Some(lab) = Lab::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    lab.forward("r2", PUBLIC_2, PRIVATE_2);
    let mut s1 = site(&lab, tmp.path(), 1);
    let mut s2 = site(&lab, tmp.path(), 2);
    // The ports are forwarded, but site 2 advertises its private address.
    start_locator(&mut s2, None, None);
    start_locator(&mut s1, Some(&format!("{PUBLIC_2}[{LOCATOR_PORT}]")), None);
    start_server(&mut s2, None, None);
    start_server(&mut s1, Some(2), None);

    write(&s1, "orders", 0..100);
    let line = s1
        .server
        .as_mut()
        .unwrap()
        .wait_line(&format!("cannot connect to receiver {PRIVATE_2}:"));
    assert!(line.contains("gateway sender `to2`"), "{line}");
    assert!(line.contains("of site 2"), "{line}");
    // Router 2 drops the SYNs silently: the attempt ends at the sender's own timeout.
    assert!(line.contains("timed out"), "{line}");
    assert!(
        line.contains("hostname-for-senders") && line.contains("hostname-for-clients"),
        "{line}"
    );
    // Nothing moved, nothing was lost, and both servers still answer.
    assert_eq!(s1.queued("to2"), 100);
    assert_eq!(s1.info_field("to2:", "distributed"), 0);
    assert_eq!(dbsize(&s2, "orders"), 0);
    assert_eq!(s2.applied(), 0);
    stop_all(&mut [&mut s1, &mut s2]);
}
