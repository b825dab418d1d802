//! Guards of the root tests: a network namespace and test users, removed
//! when dropped, even when the test fails.

use std::process::Command;

/// A network namespace with loopback up and a bridge `br0` (a veth port
/// gives it carrier) holding an IPv6 address; deleted when dropped.
pub struct BridgeNamespace {
    name: String,
}

impl BridgeNamespace {
    /// Creates the namespace `name` with `br0` holding `address`
    /// (`fd00:e2e::1/64`, added without duplicate address detection); fails
    /// the test if a command fails (what was made is still removed).
    #[track_caller]
    pub fn create(name: &str, address: &str) -> BridgeNamespace {
        run(Command::new("ip").args(["netns", "add", name]));
        let ns = BridgeNamespace { name: name.to_string() };
        for cmd in [
            "ip link set lo up",
            "ip link add br0 type bridge",
            "ip link add br0p0 type veth peer name br0p1",
            "ip link set br0p0 master br0",
            "ip link set br0p0 up",
            "ip link set br0p1 up",
            "ip link set br0 up",
        ] {
            run(Command::new("ip").args(["netns", "exec", name]).args(cmd.split(' ')));
        }
        run(Command::new("ip").args(["netns", "exec", name, "ip", "-6", "addr", "add", address, "dev", "br0", "nodad"]));
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Plugs the namespace `other` into this one's `br0`: a veth pair whose
    /// end `port` is a port of `br0` here and whose end `up0` in `other`
    /// holds `address` (`172.31.237.10/24`). Nodes in namespaces of their
    /// own reach a hub (a master, a load balancer) this way; the pair goes
    /// with either namespace.
    #[track_caller]
    pub fn plug(&self, other: &str, port: &str, address: &str) {
        let (here, there) = (self.name.as_str(), other);
        run(Command::new("ip").args(["-n", here, "link", "add", port, "type", "veth", "peer", "name", "up0", "netns", there]));
        run(Command::new("ip").args(["-n", here, "link", "set", port, "master", "br0", "up"]));
        run(Command::new("ip").args(["-n", there, "addr", "add", address, "dev", "up0"]));
        run(Command::new("ip").args(["-n", there, "link", "set", "up0", "up"]));
    }
}

impl Drop for BridgeNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Users and groups of the same names that a test creates (`slaptest…`):
/// each is deleted (`userdel`, `groupdel`) when dropped.
pub struct TestUsers(pub Vec<String>);

impl Drop for TestUsers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("userdel").arg(name).output();
            let _ = Command::new("groupdel").arg(name).output();
        }
    }
}

#[track_caller]
fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}
