//! `vaporctl network …`: virtual networks, named by name or UUID.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, NETWORK};
use crate::output::{
    format_epoch, header, or_dash, print_fields, print_json, prop_bool, prop_str, props_json,
    show_fields, table, yes_no, Props,
};
use crate::{read_input, Failure};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Every virtual network with its mode and addresses.
    List,
    /// Every property of one network, with its static DHCP hosts.
    Show { network: String },
    /// Define a network from a JSON network spec (a file, or - for stdin);
    /// vapord starts it unless the spec says "start": false.
    Create {
        spec: String,
        /// Only print the network XML vapord would define; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start a network.
    Start { network: String },
    /// Stop a network (refused while a running VM uses it).
    Stop { network: String },
    /// Stop and remove a network (refused while a running VM uses it).
    Delete { network: String },
    /// Turn starting with the host on or off.
    Autostart {
        network: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// The network's current DHCP leases.
    Leases { network: String },
    /// Static DHCP host entries (a MAC always gets the same address).
    #[command(subcommand)]
    DhcpHost(DhcpHostCmd),
}

#[derive(Subcommand)]
pub enum DhcpHostCmd {
    /// Give MAC the address IP (inside the network's IPv4 range), and
    /// optionally a host name.
    Add {
        network: String,
        mac: String,
        ip: String,
        hostname: Option<String>,
    },
    /// Remove the entry for MAC.
    Remove { network: String, mac: String },
}

pub async fn run(c: &Client, cmd: &NetworkCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        NetworkCmd::List => list(c, json_out).await,
        NetworkCmd::Show { network } => show(c, network, json_out).await,
        NetworkCmd::Create { spec, dry_run } => create(c, spec, *dry_run, json_out).await,
        NetworkCmd::Start { network } => {
            c.network(network).await?.start().await?;
            done(network, "Start", "started", json_out);
            Ok(())
        }
        NetworkCmd::Stop { network } => {
            c.network(network).await?.stop().await?;
            done(network, "Stop", "stopped", json_out);
            Ok(())
        }
        NetworkCmd::Delete { network } => {
            c.network(network).await?.delete().await?;
            done(network, "Delete", "deleted", json_out);
            Ok(())
        }
        NetworkCmd::Autostart { network, state } => {
            let on = state == "on";
            c.network(network).await?.set_autostart(on).await?;
            if json_out {
                println!("{}", json!({"network": network, "autostart": on}));
            } else {
                println!("{network}: autostart {state}");
            }
            Ok(())
        }
        NetworkCmd::Leases { network } => leases(c, network, json_out).await,
        NetworkCmd::DhcpHost(DhcpHostCmd::Add {
            network,
            mac,
            ip,
            hostname,
        }) => {
            let n = c.network(network).await?;
            n.add_dhcp_host(mac, ip, hostname.as_deref().unwrap_or(""))
                .await?;
            done(
                network,
                "AddDhcpHost",
                &format!("{mac} gets {ip}"),
                json_out,
            );
            Ok(())
        }
        NetworkCmd::DhcpHost(DhcpHostCmd::Remove { network, mac }) => {
            c.network(network).await?.remove_dhcp_host(mac).await?;
            done(
                network,
                "RemoveDhcpHost",
                &format!("{mac} removed"),
                json_out,
            );
            Ok(())
        }
    }
}

fn done(network: &str, method: &str, text: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({"network": network, "done": method}));
    } else {
        println!("{network}: {text}");
    }
}

/// `address/prefix`, or empty when there is no address.
pub fn cidr(address: &str, prefix: &str) -> String {
    match (address, prefix) {
        ("", _) => String::new(),
        (a, "" | "0") => a.to_owned(),
        (a, p) => format!("{a}/{p}"),
    }
}

/// `start-end` of a DHCP range, or empty when there is none.
pub fn range(start: &str, end: &str) -> String {
    match (start, end) {
        ("", "") => String::new(),
        (s, e) => format!("{s}-{e}"),
    }
}

fn ipv4(n: &Props) -> String {
    cidr(&prop_str(n, "IPv4Address"), &prop_str(n, "IPv4Prefix"))
}

async fn list(c: &Client, json_out: bool) -> Result<(), Failure> {
    let objs = c.objects().await?;
    let nets = objs.of(NETWORK);
    if json_out {
        print_json(&Value::Array(
            nets.iter().map(|(_, n)| props_json(n)).collect(),
        ));
        return Ok(());
    }
    let mut rows = vec![header(&[
        "NAME",
        "MODE",
        "ACTIVE",
        "AUTOSTART",
        "BRIDGE",
        "IPV4",
        "DHCP",
    ])];
    for (_, n) in &nets {
        rows.push(vec![
            prop_str(n, "Name"),
            prop_str(n, "Mode"),
            yes_no(prop_bool(n, "Active")),
            yes_no(prop_bool(n, "Autostart")),
            or_dash(prop_str(n, "Bridge")),
            or_dash(ipv4(n)),
            or_dash(range(
                &prop_str(n, "DhcpRangeStart"),
                &prop_str(n, "DhcpRangeEnd"),
            )),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

async fn show(c: &Client, network: &str, json_out: bool) -> Result<(), Failure> {
    let path = c.network_path(network).await?;
    let objs = c.objects().await?;
    let props = objs
        .get(path.as_str(), NETWORK)
        .ok_or_else(|| Failure::new(3, format!("network {network} vanished")))?;
    if json_out {
        print_json(&props_json(props));
        return Ok(());
    }
    let fields: Vec<(String, String)> = show_fields(path.as_str(), props, &|p| objs.names(p))
        .into_iter()
        .filter(|(k, _)| k != "DhcpHosts")
        .collect();
    print_fields(&fields, 20);
    let hosts: Vec<(String, String, String)> = props
        .get("DhcpHosts")
        .and_then(|v| Vec::<(String, String, String)>::try_from(v.clone()).ok())
        .unwrap_or_default();
    if hosts.is_empty() {
        println!("{:<20} -", "DhcpHosts");
    } else {
        println!("DhcpHosts:");
        let mut rows = vec![header(&["  MAC", "IP", "NAME"])];
        for (mac, ip, name) in hosts {
            rows.push(vec![format!("  {mac}"), ip, or_dash(name)]);
        }
        print!("{}", table(&rows));
    }
    Ok(())
}

async fn create(c: &Client, spec: &str, dry_run: bool, json_out: bool) -> Result<(), Failure> {
    let text = read_input(spec)?;
    let m = c.manager().await?;
    if dry_run {
        let xml = m.plan_network(&text).await?;
        if json_out {
            println!("{}", json!({"network_xml": xml}));
        } else {
            println!("{xml}");
        }
        return Ok(());
    }
    let path = m.create_network(&text).await?;
    if json_out {
        println!("{}", json!({"created": path.as_str()}));
    } else {
        println!("created {}", path.as_str());
    }
    Ok(())
}

async fn leases(c: &Client, network: &str, json_out: bool) -> Result<(), Failure> {
    let mut leases = c.network(network).await?.get_dhcp_leases().await?;
    leases.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    if json_out {
        let v: Vec<Value> = leases
            .iter()
            .map(|(mac, ip, prefix, host, exp)| {
                json!({"mac": mac, "ip": ip, "prefix": prefix, "hostname": host, "expires": exp})
            })
            .collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let mut rows = vec![header(&["MAC", "IP", "HOSTNAME", "EXPIRES"])];
    for (mac, ip, prefix, host, exp) in leases {
        rows.push(vec![
            mac,
            cidr(&ip, &prefix.to_string()),
            or_dash(host),
            format_epoch(exp),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ranges_print_compactly() {
        assert_eq!(cidr("192.168.122.1", "24"), "192.168.122.1/24");
        assert_eq!(cidr("192.168.122.1", "0"), "192.168.122.1");
        assert_eq!(cidr("", "24"), "");
        assert_eq!(range("10.0.0.2", "10.0.0.254"), "10.0.0.2-10.0.0.254");
        assert_eq!(range("", ""), "");
    }
}
