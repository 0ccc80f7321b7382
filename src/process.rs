//! Resource use of the component's local processes (`KSIT_PROCESS_MATCH`) and of the exporter.
//!
//! sysinfo refreshes only the processes reported. Finding them means reading every process's
//! name, which happens at start, once a minute, and whenever a tracked process is gone; between
//! those, only the tracked PIDs are read.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use regex::Regex;
use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::collector::Collect;
use crate::metrics::Metrics;

pub struct Processes {
    matcher: Option<Regex>,
    system: Option<System>,
    pids: Vec<Pid>,
    passes_since_scan: u32,
    passes_per_scan: u32,
    own: prometheus::process_collector::ProcessCollector,
    metrics: Arc<Metrics>,
}

impl Processes {
    pub fn new(matcher: Option<Regex>, interval: Duration, metrics: Arc<Metrics>) -> Self {
        let passes_per_scan = (Duration::from_secs(60).as_secs_f64() / interval.as_secs_f64())
            .ceil()
            .max(1.0) as u32;
        Self {
            matcher,
            system: None,
            pids: Vec::new(),
            passes_since_scan: 0,
            passes_per_scan,
            own: prometheus::process_collector::ProcessCollector::for_self(),
            metrics,
        }
    }

    fn matches(re: &Regex, p: &Process) -> bool {
        let base = |s: &std::ffi::OsStr| {
            std::path::Path::new(s)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        re.is_match(&p.name().to_string_lossy())
            || p.exe().is_some_and(|e| re.is_match(&base(e.as_os_str())))
            || p.cmd().first().is_some_and(|c| re.is_match(&base(c)))
    }

    /// Reads the names of all processes and keeps the PIDs that match.
    fn scan(system: &mut System, re: &Regex) -> Vec<Pid> {
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_exe(UpdateKind::OnlyIfNotSet)
                .with_cmd(UpdateKind::OnlyIfNotSet),
        );
        let own = sysinfo::get_current_pid().ok();
        let mut pids: Vec<Pid> = system
            .processes()
            .iter()
            .filter(|(pid, p)| {
                Some(**pid) != own && p.thread_kind().is_none() && Self::matches(re, p)
            })
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    fn collect_matching(&mut self) -> Result<(), String> {
        let Some(re) = &self.matcher else {
            return Ok(());
        };
        let system = match &mut self.system {
            Some(s) => s,
            None => self
                .system
                .insert(System::new().map_err(|e| format!("cannot read the process table: {e}"))?),
        };
        if self.pids.is_empty() || self.passes_since_scan >= self.passes_per_scan {
            self.pids = Self::scan(system, re);
            self.passes_since_scan = 0;
        }
        self.passes_since_scan += 1;
        let refresh = ProcessRefreshKind::nothing().with_cpu().with_memory();
        let updated =
            system.refresh_processes_specifics(ProcessesToUpdate::Some(&self.pids), true, refresh);
        if updated < self.pids.len() {
            // A tracked process is gone: look again now rather than report a partial sum.
            self.pids = Self::scan(system, re);
            system.refresh_processes_specifics(ProcessesToUpdate::Some(&self.pids), true, refresh);
        }
        let procs: Vec<&Process> = self
            .pids
            .iter()
            .filter_map(|p| system.process(*p))
            .collect();
        let cpu_ms: u64 = procs.iter().map(|p| p.accumulated_cpu_time()).sum();
        let rss: u64 = procs.iter().map(|p| p.memory()).sum();
        let oldest = procs.iter().map(|p| p.start_time()).min();
        self.metrics.process_count.set(procs.len() as i64);
        self.metrics
            .process_resident_memory
            .set(i64::try_from(rss).unwrap_or(i64::MAX));
        self.metrics
            .process_start_time
            .set(oldest.unwrap_or_default() as f64);
        self.metrics.set_process_cpu_seconds(cpu_ms as f64 / 1000.0);
        Ok(())
    }
}

impl Collect for Processes {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn collect(&mut self) -> Result<(), String> {
        // The exporter's own process_* series are read here, off the scrape path.
        self.metrics.own_process.set(self.own.collect());
        self.collect_matching()
    }
}
