//! The `coder` agent as its own process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    legato_agents::run_standalone(legato_agents::AgentKind::Coder).await
}
