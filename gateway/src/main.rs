//! `tickgate`: the whole system in one process.

use clap::Parser;
use mimalloc::MiMalloc;
use tickgate_gateway::config::Subcommand;
use tickgate_gateway::{server, Config, Flags};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Log lines' time, then (on a node of a deployment) the node's id: every line says which
/// node wrote it.
struct NodeTime(Option<String>);

impl tracing_subscriber::fmt::time::FormatTime for NodeTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
        match &self.0 {
            Some(node) => write!(w, " [{node}]"),
            None => Ok(()),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    // Before the runtime and the engine allocate most of what they will.
    let huge_pages = if flags.transparent_huge_pages {
        Ok(())
    } else {
        tickgate_gateway::heap::disable_transparent_huge_pages()
    };
    let verify = flags.command.as_ref().map(|Subcommand::VerifyJournal { json }| *json);
    let (data_dir, shards, workers) = (flags.data_dir.clone(), flags.shards, flags.workers);
    let config = Config::try_from(flags)?;
    let node = config.cluster.as_ref().map(|c| c.node.clone());
    // Colours only for a person at a terminal (and not with NO_COLOR): a file, a pipe or
    // journald would keep the escape codes.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_timer(NodeTime(node))
        .init();
    stop_when_a_core_thread_panics();
    if let Err(e) = huge_pages {
        tracing::warn!("transparent huge pages stay on: {e}");
    }
    if let Some(json) = verify {
        return verify_journal(&data_dir, shards, json);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(server::run(config, shutdown_signal()))
}

/// Whether a panic on the thread named `name` leaves the process unable to do its work:
/// any thread of its own (an engine shard, its journal, the fan-out hub and writers, a
/// replica, the feed...). Not tokio's workers: a request or connection task that panics is
/// caught by tokio, and only that request or connection ends.
fn is_core_thread(name: Option<&str>) -> bool {
    name.is_some_and(|n| n != "main" && !n.starts_with("tokio-"))
}

/// A core thread that panics stops the process (exit code 70) after the panic's message:
/// a dead engine shard would otherwise leave a server that answers `/healthz` `ok`, serves
/// a frozen book and times out every order. Stopped, it is restarted by its supervisor and
/// recovers from the journal, as after `kill -9`.
fn stop_when_a_core_thread_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        if is_core_thread(thread.name()) {
            tracing::error!(
                thread = thread.name().unwrap_or_default(),
                "a core thread panicked; stopping (a restart recovers from the journal)"
            );
            std::process::exit(70);
        }
    }));
}

/// `tickgate verify-journal`: replays the data directory from scratch, read-only.
fn verify_journal(dir: &std::path::Path, shards: usize, json: bool) -> anyhow::Result<()> {
    let shards = shards.max(1);
    // The check the server makes at start: another count verifies the wrong journals. Not
    // a data directory at all (a typo, an empty one): nothing verified is no success.
    if tickgate_engine::durable::matches_shards(dir, shards)?.is_none() {
        anyhow::bail!("{} holds no journal (no SHARDS file, no shard-<i>)", dir.display());
    }
    let started = std::time::Instant::now();
    let verified = tickgate_engine::durable::verify(dir, &server::engine_spec(), shards)?;
    let elapsed = started.elapsed().as_secs_f64();
    let records: u64 = verified.shards.iter().map(|s| s.records).sum();
    let conserved =
        verified.shards.iter().all(|s| s.transfers.as_ref().is_none_or(|t| *t == s.asset_totals));
    if json {
        let shards: Vec<_> = verified
            .shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "shard": s.shard,
                    "from_snapshot": s.from_snapshot,
                    "records": s.records,
                    "last_seq": s.last_seq,
                    "state_digest": format!("{:016x}", s.state_digest),
                    "event_digest": format!("{:016x}", s.event_digest),
                    "events": s.events,
                    "asset_totals": s.asset_totals.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    "transfers": s.transfers.as_ref().map(|t| t.iter().map(|v| v.to_string()).collect::<Vec<_>>()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "shards": shards, "conserved": conserved, "seconds": elapsed })
        );
    } else {
        for s in &verified.shards {
            let from =
                s.from_snapshot.map_or("empty state".to_string(), |q| format!("snapshot {q}"));
            println!(
                "shard {}: from {from}, {} records to seq {}, state {:016x}, events {} digest {:016x}",
                s.shard, s.records, s.last_seq, s.state_digest, s.events, s.event_digest
            );
        }
        println!(
            "{records} records in {elapsed:.3} s ({:.0} records/s); money conserved: {}",
            records as f64 / elapsed.max(1e-9),
            if conserved { "yes" } else { "NO" }
        );
    }
    if !conserved {
        anyhow::bail!("asset totals differ from the sum of transfers");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::is_core_thread;

    #[test]
    fn the_process_stops_for_its_own_threads_not_for_a_request_task() {
        for name in ["engine-0", "journal-1", "fanout-writer-0", "replica-0", "hub", "feed"] {
            assert!(is_core_thread(Some(name)), "{name}");
        }
        for name in [Some("tokio-runtime-worker"), Some("main"), None] {
            assert!(!is_core_thread(name), "{name:?}");
        }
    }
}
