//! A small service-like program for the `rebuilt-binary` bench case: parses a JSON config,
//! routes requests by regex and renders JSON replies. Its content does not matter; its build
//! (a release binary with real dependencies) does.

use std::collections::BTreeMap;

use clap::Parser;
use regex::Regex;
use serde::{Deserialize, Serialize};

const VERSION: &str = "1.4.0";

#[derive(Parser, Debug)]
#[command(version, about = "bench server")]
struct Args {
    /// Config file (JSON).
    #[arg(long, default_value = "/app/config.json")]
    config: String,
    /// Requests to route, e.g. "GET /users/42".
    requests: Vec<String>,
}

#[derive(Deserialize, Serialize, Debug, Default)]
struct Config {
    name: String,
    routes: Vec<Route>,
    limits: BTreeMap<String, u64>,
}

#[derive(Deserialize, Serialize, Debug, Clone)]
struct Route {
    method: String,
    pattern: String,
    handler: String,
}

#[derive(Serialize, Debug)]
struct Reply<'a> {
    status: u16,
    handler: Option<&'a str>,
    params: BTreeMap<String, String>,
    server: String,
}

fn compile(routes: &[Route]) -> Vec<(Route, Regex)> {
    routes
        .iter()
        .filter_map(|r| Regex::new(&format!("^{}$", r.pattern)).ok().map(|re| (r.clone(), re)))
        .collect()
}

fn route<'a>(table: &'a [(Route, Regex)], method: &str, path: &str) -> Reply<'a> {
    for (r, re) in table {
        if r.method != method {
            continue;
        }
        if let Some(caps) = re.captures(path) {
            let params = re
                .capture_names()
                .flatten()
                .filter_map(|n| Some((n.to_owned(), caps.name(n)?.as_str().to_owned())))
                .collect();
            return Reply {
                status: 200,
                handler: Some(&r.handler),
                params,
                server: format!("bench-server/{VERSION}"),
            };
        }
    }
    Reply {
        status: 404,
        handler: None,
        params: BTreeMap::new(),
        server: format!("bench-server/{VERSION}"),
    }
}

fn limit(config: &Config, key: &str) -> u64 {
    // Requests per second allowed for `key`, with a floor for unknown keys.
    config.limits.get(key).copied().unwrap_or(10).max(1)
}

fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn default_config() -> Config {
    let routes = [
        ("GET", r"/users/(?P<id>\d+)", "get_user"),
        ("POST", r"/users", "create_user"),
        ("GET", r"/orders/(?P<order>[a-z0-9-]+)/items/(?P<item>\d+)", "get_item"),
        ("DELETE", r"/sessions/(?P<token>[A-Za-z0-9]{16,64})", "logout"),
        ("GET", r"/health", "health"),
    ];
    Config {
        name: "bench".into(),
        routes: routes
            .iter()
            .map(|(m, p, h)| Route {
                method: (*m).into(),
                pattern: (*p).into(),
                handler: (*h).into(),
            })
            .collect(),
        limits: [("get_user".to_owned(), 100), ("create_user".to_owned(), 5)]
            .into_iter()
            .collect(),
    }
}

fn main() {
    let args = Args::parse();
    let config: Config = std::fs::read(&args.config)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(default_config);
    let table = compile(&config.routes);
    for req in &args.requests {
        let (method, path) = req.split_once(' ').unwrap_or(("GET", req));
        let reply = route(&table, method, path);
        let json = serde_json::to_string(&reply).unwrap_or_default();
        let rate = reply.handler.map_or(0, |h| limit(&config, h));
        println!("{json} rate={rate} sum={:x}", checksum(json.as_bytes()));
    }
}
