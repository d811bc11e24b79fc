//! Shared workloads for tickgate's benchmarks: commands built once, in setup, from the
//! seeded synthetic feed, so every run measures the same work.

use tickgate_engine::{Command, CommandKind, Engine, EngineSpec, UnixNanos};
use tickgate_feed::{FlowConfig, SequentialIds, SyntheticFlow};

/// A realistic mixed flow: funding, a warm-up that fills the books, then the commands to
/// measure (mostly adds near the top, many cancels, some marketable orders).
#[derive(Debug)]
pub struct Workload {
    /// The engine's tables.
    pub spec: EngineSpec,
    /// Funding and warm-up, applied untimed.
    pub setup: Vec<Command>,
    /// The measured commands.
    pub measured: Vec<Command>,
}

impl Workload {
    /// `warmup` + `measured` commands of synthetic flow from `seed`.
    pub fn mixed(seed: u64, warmup: usize, measured: usize) -> Workload {
        let spec = EngineSpec { accounts_max: 2048, ..EngineSpec::default() };
        let engine = Engine::new(&spec, |_| true).expect("default markets are valid");
        let mut flow =
            SyntheticFlow::new(FlowConfig { seed, ..FlowConfig::default() }, engine.instruments());
        let mut ts = 0u64;
        let mut stamp = |kind| {
            ts += 1;
            Command { ts: UnixNanos(ts), kind }
        };
        let mut setup: Vec<Command> = flow
            .funding(engine.assets())
            .into_iter()
            .map(|t| stamp(CommandKind::Transfer(t)))
            .collect();
        let mut ids = SequentialIds(0);
        setup.extend((0..warmup).map(|_| stamp(flow.next_command(&mut ids))));
        let measured = (0..measured).map(|_| stamp(flow.next_command(&mut ids))).collect();
        Workload { spec, setup, measured }
    }

    /// A fresh engine with the setup applied.
    pub fn engine(&self) -> Engine {
        let mut engine = Engine::new(&self.spec, |_| true).expect("valid spec");
        let mut sink = Vec::with_capacity(1024);
        for cmd in &self.setup {
            engine.process(cmd, &mut sink);
            sink.clear();
        }
        engine
    }
}
