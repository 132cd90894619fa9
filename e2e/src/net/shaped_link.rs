//! A network namespace joined to the host by a veth pair whose both ends are rate-limited with
//! `tc tbf`. Services started inside the namespace (with [`ShapedLink::command`]) are reached at
//! [`ShapedLink::inner_ip`]. Addresses come from 198.18.0.0/15, the benchmarking range, and
//! never leave this machine.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A namespace + veth pair; removed on drop.
pub struct ShapedLink {
    ns: String,
    host_if: String,
    inner_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl ShapedLink {
    /// Creates the namespace and link. `slot` (0..=255) keeps parallel links apart;
    /// `rate_mbit` of `None` leaves the link unshaped.
    pub fn create(slot: u8, rate_mbit: Option<u32>) -> Result<Self> {
        let ns = format!("csbench{}-{slot}", std::process::id());
        let host_if = format!("csb{slot}h{}", std::process::id() % 10000);
        let peer_if = format!("csb{slot}n{}", std::process::id() % 10000);
        let host_ip = Ipv4Addr::new(198, 18, slot, 1);
        let inner_ip = Ipv4Addr::new(198, 18, slot, 2);
        ip(&["netns", "add", &ns])?;
        let link = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            inner_ip,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &ns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{inner_ip}/30"),
            "dev",
            &peer_if,
        ])?;
        ip(&["-n", &ns, "link", "set", &peer_if, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if let Some(rate) = rate_mbit {
            // Burst sized for the rate (at least 64 KiB) so tbf does not starve TCP.
            let burst = format!("{}kb", (rate as u64 * 1000 / 8 / 100).max(64));
            let rate = format!("{rate}mbit");
            run(
                "tc",
                &[
                    "qdisc", "add", "dev", &host_if, "root", "tbf", "rate", &rate, "burst", &burst,
                    "latency", "100ms",
                ],
            )?;
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &peer_if, "root", "tbf",
                    "rate", &rate, "burst", &burst, "latency", "100ms",
                ],
            )?;
        }
        Ok(link)
    }

    /// The address of the namespace side of the link.
    pub fn inner_ip(&self) -> Ipv4Addr {
        self.inner_ip
    }

    /// A command that runs `prog` inside the namespace.
    pub fn command(&self, prog: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, prog]);
        cmd
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
