//! Runs the Service Bus stand-in on its own, for `legato bench --bus
//! servicebus` and for trying legato against "Service Bus" by hand:
//! `cargo run -p legato-servicebus-standin -- --port 5380`. It prints the
//! endpoint and a connection string, then serves until interrupted.
//! `--latency-ms N` delays every answer by N ms, like a namespace far away.

use std::net::SocketAddr;

use legato_servicebus_standin::{Config, StandIn};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut namespace = "standin".to_owned();
    let mut latency = std::time::Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => {
                port = p
                    .parse()
                    .map_err(|_| std::io::Error::other("--port takes a number"))?;
            }
            ("--namespace", Some(n)) => namespace = n,
            ("--latency-ms", Some(ms)) => {
                latency = std::time::Duration::from_millis(
                    ms.parse()
                        .map_err(|_| std::io::Error::other("--latency-ms takes a number"))?,
                );
            }
            _ => {
                return Err(std::io::Error::other(
                    "usage: legato-servicebus-standin [--port N] [--namespace NAME] [--latency-ms N]",
                ));
            }
        }
    }
    let standin = StandIn::start_on(
        Config::new(&namespace).latency(latency),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await?;
    println!("endpoint: {}", standin.url());
    println!("connection string: {}", standin.connection_string());
    tokio::signal::ctrl_c().await?;
    println!("{} requests served", standin.requests());
    Ok(())
}
