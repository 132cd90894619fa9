//! Network profiles: where the benchmark's registry runs and what link the nodes reach it over.
//! `loopback` is the plain harness registry; `100mbit-20ms` runs the registry in a network
//! namespace behind a `tbf`-shaped veth pair (100 Mbit/s each way) and a delay proxy adding
//! 10 ms each way. The counting proxy sits in front of everything, on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::net::delay_proxy::DelayProxy;
use crate::net::shaped_link::ShapedLink;
use crate::registry::Placement;
use crate::{BuiltImage, Registry, TestImages};

/// A network profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Loopback,
    /// `rate_mbit` both ways, `rtt_ms` round trip added by the delay proxy.
    Shaped {
        rate_mbit: u32,
        rtt_ms: u64,
    },
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "loopback" => Ok(Self::Loopback),
            "100mbit-20ms" => Ok(Self::Shaped {
                rate_mbit: 100,
                rtt_ms: 20,
            }),
            other => bail!("unknown profile {other:?} (loopback, 100mbit-20ms)"),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Loopback => "loopback".into(),
            Self::Shaped { rate_mbit, rtt_ms } => format!("{rate_mbit}mbit-{rtt_ms}ms"),
        }
    }
}

/// A registry reachable over a profile's network, with the pause image pushed. Dropping it stops
/// the registry, then the delay proxy, then removes the namespace.
pub struct Network {
    pub registry: Registry,
    pub images: TestImages,
    pub pause: BuiltImage,
    _delay: Option<DelayProxy>,
    _link: Option<ShapedLink>,
}

impl Network {
    /// Starts the registry for `profile`; `slot` keeps namespaces of concurrent runs apart.
    pub async fn start(profile: Profile, slot: u8) -> Result<Self> {
        let (registry, delay, link) = match profile {
            Profile::Loopback => (Registry::start().await?, None, None),
            Profile::Shaped { rate_mbit, rtt_ms } => {
                let link = ShapedLink::create(slot, Some(rate_mbit)).context("shaped link")?;
                let listen: SocketAddr = (link.inner_ip(), 5000).into();
                let delay = DelayProxy::start(listen, Duration::from_millis(rtt_ms / 2)).await?;
                // `ip netns exec NS PROG`: keep everything but PROG as the prefix.
                let cmd = link.command("true");
                let mut prefix = vec![cmd.get_program().to_string_lossy().into_owned()];
                let args: Vec<String> = cmd
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                prefix.extend(args[..args.len().saturating_sub(1)].iter().cloned());
                let registry = Registry::start_placed(Placement {
                    prefix,
                    listen,
                    via: delay.addr(),
                })
                .await
                .context("registry in the namespace")?;
                (registry, Some(delay), Some(link))
            }
        };
        let images = TestImages::new(&registry)?;
        let pause = images.pause().await?;
        Ok(Self {
            registry,
            images,
            pause,
            _delay: delay,
            _link: link,
        })
    }
}

impl Network {
    /// Median time of `GET /v2/` through the counting proxy, a new connection each (as the
    /// proxy opens one upstream per request): what every small registry request costs on this
    /// profile, printed so a run shows its link behaves as configured. Resets the counters.
    pub async fn round_trip(&self) -> Result<Duration> {
        let addr = self.registry.addr();
        let mut times = tokio::task::spawn_blocking(move || -> Result<Vec<Duration>> {
            use std::io::{Read, Write};
            let mut times = Vec::new();
            for _ in 0..11 {
                let t = std::time::Instant::now();
                let mut s = std::net::TcpStream::connect(addr).context("connect the registry")?;
                s.set_nodelay(true)?;
                s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                if !answer.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "GET /v2/ answered {:?}",
                        String::from_utf8_lossy(&answer[..answer.len().min(40)])
                    );
                }
                times.push(t.elapsed());
            }
            Ok(times)
        })
        .await??;
        self.registry.reset_counters();
        times.sort();
        Ok(times[times.len() / 2])
    }
}
