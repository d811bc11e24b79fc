//! `tickgate-tools`: instruments for latency tuning.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tickgate_tools::load::{self, LoadConfig, Pattern};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// A replay's pace: 0 (as fast as clients read) or from 0.001 to 1,000,000 times the
/// recorded one.
fn speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s == 0.0 || (s.is_finite() && (0.001..=1e6).contains(&s)) => Ok(s),
        Ok(_) => Err("0, or a pace from 0.001 to 1000000".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A number of seconds: finite, 0 or more, at most a day (a typo of `--duration` must not
/// panic or run for ever).
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        Ok(_) => Err("seconds from 0 to 86400".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Parser, Debug)]
#[command(name = "tickgate-tools", version, about = "Instruments for tickgate latency tuning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open N WebSocket clients against a running server and report delivery and latency.
    Load {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Connections.
        #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        connections: u64,
        /// Channel kinds per symbol, comma separated (book, bbo, trades).
        #[arg(long, default_value = "book,trades")]
        kinds: String,
        /// `all`, `spread:K` (K symbols per connection) or `hot:SYMBOL`.
        #[arg(long, default_value = "spread:3")]
        pattern: String,
        /// Symbols the server lists.
        #[arg(
            long,
            default_value = "BTC-USD,ETH-USD,SOL-USD,XRP-USD,DOGE-USD,ADA-USD,AVAX-USD,LINK-USD"
        )]
        symbols: String,
        /// Ask for JSON frames instead of binary.
        #[arg(long)]
        json_frames: bool,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// Seconds before measuring.
        #[arg(long, default_value_t = 2.0, value_parser = seconds)]
        warmup: f64,
        /// Client runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Hold idle connections (no subscriptions), e.g. to measure server memory per connection.
        #[arg(long)]
        idle: bool,
        /// Rebuild the followed books and check them against the REST snapshot at the end.
        #[arg(long)]
        verify: bool,
        /// REST address for --verify (default: --addr).
        #[arg(long)]
        rest_addr: Option<SocketAddr>,
        /// Write the latency percentile distribution as an SVG plot to this file.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Connect with TLS (wss://), trusting this certificate (PEM), e.g. the server's
        /// self-signed one.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// The name the server's certificate must have, with --tls-ca.
        #[arg(long, default_value = "localhost")]
        tls_name: String,
        /// More connections that subscribe the same, read for --stall-after seconds, then
        /// stop reading with their sockets open; the report is the others' (healthy only).
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        /// Seconds from the start until the stalled connections stop reading.
        #[arg(long, default_value_t = 2.0, value_parser = seconds)]
        stall_after: f64,
    },
    /// REST polling vs WebSocket push vs SSE against a running server (feed on).
    Compare {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Instrument.
        #[arg(long, default_value = "BTC-USD")]
        symbol: String,
        /// Updates one client waits for, per method.
        #[arg(long, default_value_t = 50)]
        updates: usize,
        /// Polling period in milliseconds.
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
        /// Clients in the load part.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds of the load part, per method.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// The server's pid, to report its CPU use.
        #[arg(long)]
        server_pid: Option<u32>,
        /// User for the SSE part, `name:password`.
        #[arg(long, default_value = "alice:alice-demo-password")]
        user: String,
    },
    /// Record what a WebSocket client receives on some channels into a capture file.
    Record {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Channels, comma separated.
        #[arg(long, default_value = "book.BTC-USD,trades.BTC-USD,bbo.BTC-USD")]
        channels: String,
        /// Seconds to record.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// Stop after this many frames (0: no limit).
        #[arg(long, default_value_t = 0)]
        frames: u64,
        /// Capture file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Serve a capture to WebSocket clients at 1x, Nx or full speed.
    Replay {
        /// Capture file.
        #[arg(long = "in")]
        input: std::path::PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Pace relative to the recording (1, 10, ...); 0: as fast as clients read.
        #[arg(long, default_value_t = 1.0, value_parser = speed)]
        speed: f64,
    },
    /// Write a users file (JSON) for `tickgate --users`: `user<i>` with password `pw<i>`
    /// on account `first-account + i`.
    Users {
        /// Users.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Account of the first user (demo users use 1 and 2; the synthetic flow 1000 up).
        #[arg(long, default_value_t = 10)]
        first_account: u32,
        /// Cheap argon2 parameters (8 KiB, 1 pass): fast logins for load tests only.
        #[arg(long)]
        cheap: bool,
        /// Output file.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Open N SSE alert streams and report delivery latency of price alerts.
    Sse {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Streams (spread over the users).
        #[arg(long, short = 'n', default_value_t = 100)]
        streams: usize,
        /// Users as `name:password`, comma separated, or `generated:N` for the N users
        /// `tickgate-tools users --count N` writes (`user<i>` / `pw<i>`).
        #[arg(long, default_value = "alice:alice-demo-password,bob:bob-demo-password")]
        users: String,
        /// Set a repeating `crosses` alert at the current mid of this symbol for each user
        /// (the live market then fires it); without it the streams stay idle.
        #[arg(long)]
        alert: Option<String>,
        /// With --alert: also set alerts 1 to K steps on either side of the mid.
        #[arg(long, default_value_t = 0)]
        alert_spread: i64,
        /// Ticks between two alerts of the spread.
        #[arg(long, default_value_t = 1)]
        alert_step: i64,
        /// Offset user i's alerts by i - users/2 ticks (users' alerts at different prices).
        #[arg(long)]
        stagger: bool,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// Seconds before measuring.
        #[arg(long, default_value_t = 3.0, value_parser = seconds)]
        warmup: f64,
        /// Client runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // As the server does: a fault on fresh heap must not zero 2 MiB on the probe's thread
    // (thousands of connections arriving allocate plenty). Where the kernel refuses, the
    // probe runs as before.
    let _ = tickgate_gateway::heap::disable_transparent_huge_pages();
    match Cli::parse().command {
        Command::Compare {
            addr,
            symbol,
            updates,
            poll_ms,
            clients,
            duration,
            server_pid,
            user,
        } => {
            let (name, password) = user.split_once(':').context("--user is name:password")?;
            let config = tickgate_tools::compare::CompareConfig {
                addr,
                symbol,
                updates,
                poll_interval: Duration::from_millis(poll_ms.max(1)),
                clients,
                duration: Duration::from_secs_f64(duration),
                server_pid,
                user: (name.to_string(), password.to_string()),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let result = runtime.block_on(tickgate_tools::compare::run(&config))?;
            print!("{}", result.table(&config));
            Ok(())
        }
        Command::Record { addr, channels, duration, frames, out } => {
            let config = tickgate_tools::capture::RecordConfig {
                addr,
                channels: channels.split(',').map(str::to_string).collect(),
                duration: Duration::from_secs_f64(duration),
                frames_max: frames,
                progress: true,
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(tickgate_tools::capture::record(&config, &out))?;
            Ok(())
        }
        Command::Replay { input, listen, speed } => {
            let capture = tickgate_tools::capture::read(&input)?;
            if capture.torn_bytes > 0 {
                eprintln!(
                    "{}: the last {} bytes are an incomplete frame (a recorder stopped \
                     mid-write): left out",
                    input.display(),
                    capture.torn_bytes
                );
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                eprintln!(
                    "{} frames from {} (channels {}); serving ws://{}/ at {}",
                    capture.frames.len(),
                    capture.header["server"],
                    capture.header["channels"],
                    listener.local_addr()?,
                    if speed > 0.0 { format!("{speed}x") } else { "full speed".into() }
                );
                let speed = (speed > 0.0).then_some(speed);
                let stats = std::sync::Arc::new(tickgate_tools::capture::ReplayStats::default());
                let bar = replay_bar(capture.frames.len() as u64);
                let serving = tokio::spawn(tickgate_tools::capture::serve_counted(
                    listener,
                    std::sync::Arc::new(capture),
                    speed,
                    std::sync::Arc::clone(&stats),
                ));
                // Progress until Ctrl-C, then a summary.
                let started = std::time::Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = tick.tick() => {
                            update_replay_bar(&bar, &stats, started);
                        }
                    }
                }
                serving.abort();
                update_replay_bar(&bar, &stats, started);
                bar.finish_and_clear();
                use std::sync::atomic::Ordering::Relaxed;
                eprintln!(
                    "replay: {} clients, {} frames, {:.1} MB sent in {:.1} s",
                    stats.clients.load(Relaxed),
                    stats.frames.load(Relaxed),
                    stats.bytes.load(Relaxed) as f64 / 1e6,
                    started.elapsed().as_secs_f64()
                );
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Users { count, first_account, cheap, out } => {
            tickgate_tools::users::write(&out, count, first_account, cheap)?;
            eprintln!("wrote {count} users to {}", out.display());
            Ok(())
        }
        Command::Sse {
            addr,
            streams,
            users,
            alert,
            alert_spread,
            alert_step,
            stagger,
            duration,
            warmup,
            threads,
            json,
        } => {
            let users = match users.strip_prefix("generated:") {
                Some(n) => {
                    let n: u32 = n.parse().context("generated:N needs a number")?;
                    (0..n).map(|i| format!("user{i}:pw{i}")).collect::<Vec<_>>().join(",")
                }
                None => users,
            };
            let users = users
                .split(',')
                .map(|u| {
                    u.split_once(':')
                        .map(|(n, p)| (n.to_string(), p.to_string()))
                        .context("--users entries are name:password")
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let config = tickgate_tools::sse::SseConfig {
                addr,
                streams,
                users,
                alert_symbol: alert,
                alert_spread: alert_spread.clamp(0, 40),
                alert_step: alert_step.max(1),
                stagger,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            let report = runtime.block_on(tickgate_tools::sse::run(config))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.json())?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Load {
            addr,
            connections,
            kinds,
            pattern,
            symbols,
            json_frames,
            duration,
            warmup,
            threads,
            json,
            idle,
            verify,
            rest_addr,
            plot,
            tls_ca,
            tls_name,
            stalled,
            stall_after,
        } => {
            let pattern = match pattern.split_once(':') {
                None if pattern == "all" => Pattern::All,
                Some(("spread", k)) => {
                    Pattern::Spread(k.parse().context("spread:K needs a number")?)
                }
                Some(("hot", s)) => Pattern::Hot(s.to_string()),
                _ => anyhow::bail!("--pattern must be all, spread:K or hot:SYMBOL"),
            };
            let connections = connections as usize;
            let config = LoadConfig {
                addr,
                connections,
                kinds: kinds.split(',').map(str::to_string).collect(),
                pattern,
                symbols: symbols.split(',').map(str::to_string).collect(),
                json: json_frames,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                idle,
                verify,
                rest_addr,
                stalled,
                stall_after: Duration::from_secs_f64(stall_after),
                tls: match tls_ca {
                    Some(ca) => Some(tickgate_tools::load::Wss {
                        connector: tickgate_tools::load::tls_connector(&ca)?,
                        name: tls_name,
                    }),
                    None => None,
                },
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            let title = format!(
                "tickgate load: {connections} connections, {:?}, {duration} s",
                config.pattern
            );
            let report = runtime.block_on(load::run(config))?;
            // The report first: a plot that cannot be written must not lose the run.
            if json {
                println!("{}", serde_json::to_string_pretty(&report.json())?);
            } else {
                print!("{}", report.table());
            }
            if let Some(path) = &plot {
                tickgate_tools::plot::latency_svg(&report.latency, &title, path)
                    .with_context(|| format!("writing the plot to {}", path.display()))?;
                eprintln!("latency plot written to {}", path.display());
            }
            if report.connections == 0 && report.stalled == 0 {
                anyhow::bail!("no connection to {addr} succeeded: nothing was measured");
            }
            Ok(())
        }
    }
}

/// The replayer's progress bar: frames of the capture reached by the furthest client.
fn replay_bar(frames: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(frames);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} frames  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("waiting for a client");
    bar
}

fn update_replay_bar(
    bar: &indicatif::ProgressBar,
    stats: &tickgate_tools::capture::ReplayStats,
    started: std::time::Instant,
) {
    use std::sync::atomic::Ordering::Relaxed;
    for line in stats.take_finished() {
        if bar.is_hidden() {
            eprintln!("{line}"); // not a terminal: no bar to print above
        } else {
            bar.println(line);
        }
    }
    bar.set_position(stats.furthest.load(Relaxed));
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let clients = stats.clients.load(Relaxed);
    if clients > 0 {
        bar.set_message(format!(
            "{clients} clients, {:.1} MB sent, {:.0} frames/s",
            stats.bytes.load(Relaxed) as f64 / 1e6,
            stats.frames.load(Relaxed) as f64 / secs
        ));
    }
}
