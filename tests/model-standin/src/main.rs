//! `legato-model-standin [port] [api key]`: serves the stand-in on
//! 127.0.0.1 and prints its base URL on the first line of stdout, for
//! tests in other languages; stops when stdin closes or on a signal.

use std::io::Read;

use legato_model_standin::ModelStandIn;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let key = args.next().unwrap_or_else(|| "sk-standin".into());
    let standin = ModelStandIn::start(port, &key).await?;
    println!("{}", standin.base_url());
    // Until whoever started it goes (its end of stdin closes).
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
