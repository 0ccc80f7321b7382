//! Resource use of the component's local processes (`KSIT_PROCESS_MATCH`) and of the exporter.
//!
//! sysinfo refreshes only the processes reported. Finding them means reading every process's
//! name, which happens at start, once a minute, and whenever a tracked process is gone; between
//! those, only the tracked PIDs are read.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::{Counter, Metric, MetricType};
use regex::Regex;
use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::collector::Collect;
use crate::metrics::{Family, Gauges, Mirror, Registry};

pub const COUNT: Family = Family {
    name: "ksit_component_processes",
    help: "Local processes matching KSIT_PROCESS_MATCH.",
};
pub const RESIDENT_MEMORY: Family = Family {
    name: "ksit_component_process_resident_memory_bytes",
    help: "Resident memory of the matching processes, summed.",
};
pub const START_TIME: Family = Family {
    name: "ksit_component_process_start_time_seconds",
    help: "Unix start time of the oldest matching process.",
};
pub const CPU: Family = Family {
    name: "ksit_component_process_cpu_seconds_total",
    help: "User and system CPU time of the matching processes, summed; resets when one exits.",
};

#[derive(Clone)]
pub struct Families {
    count: Gauges<()>,
    resident_memory: Gauges<()>,
    start_time: Gauges<()>,
    /// A counter read from the kernel as a total.
    cpu: Mirror,
    /// The exporter's own standard `process_*` families, read in the background.
    own: Mirror,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            count: registry.gauges(COUNT),
            resident_memory: registry.gauges(RESIDENT_MEMORY),
            start_time: {
                let start_time = registry.gauges(START_TIME);
                start_time.remove(&());
                start_time
            },
            cpu: registry.mirror(&[(CPU, &[])]),
            own: registry.mirror_descs(
                prometheus::process_collector::ProcessCollector::for_self()
                    .desc()
                    .into_iter()
                    .cloned()
                    .collect(),
            ),
        }
    }

    fn set_cpu_seconds(&self, seconds: f64) {
        let mut counter = Counter::default();
        counter.set_value(seconds);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        self.cpu
            .set(vec![CPU.with(MetricType::COUNTER, vec![metric])]);
    }
}

pub struct Processes {
    matcher: Option<Regex>,
    system: Option<System>,
    pids: Vec<Pid>,
    passes_since_scan: u32,
    passes_per_scan: u32,
    own: prometheus::process_collector::ProcessCollector,
    families: Families,
}

impl Processes {
    pub fn new(matcher: Option<Regex>, interval: Duration, families: Families) -> Self {
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
            families,
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
        let f = &self.families;
        f.count.set(&(), procs.len() as f64);
        // No process, no start time, memory or CPU: absent rather than a 1970 that would read
        // as a restart, or a 0 that would read as a process using nothing.
        match oldest {
            Some(t) => {
                f.start_time.set(&(), t as f64);
                f.resident_memory.set(&(), rss as f64);
                f.set_cpu_seconds(cpu_ms as f64 / 1000.0);
            }
            None => {
                f.start_time.remove(&());
                f.resident_memory.remove(&());
                f.cpu.set(Vec::new());
            }
        }
        Ok(())
    }
}

impl Collect for Processes {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn collect(&mut self) -> Result<(), String> {
        // The exporter's own process_* series are read here, off the scrape path.
        self.families.own.set(self.own.collect());
        self.collect_matching()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_matching_process_means_no_start_time_memory_or_cpu_not_0() {
        let registry = Registry::new();
        let families = Families::register(&registry);
        let served = |registry: &Registry, family: &str| {
            String::from_utf8_lossy(&registry.snapshot().text())
                .lines()
                .any(|l| l.starts_with(family))
        };
        let matcher = Regex::new(".").expect("a valid regex");
        let mut p = Processes::new(Some(matcher), Duration::from_secs(10), families.clone());
        p.collect().await.expect("the process table is readable");
        assert!(families.start_time.get(&()).is_some_and(|t| t > 1e9));
        assert!(families.resident_memory.get(&()).is_some_and(|b| b > 0.0));
        assert!(served(&registry, CPU.name));
        let matcher = Regex::new("^no-such-process-ksit-test$").expect("a valid regex");
        let mut p = Processes::new(Some(matcher), Duration::from_secs(10), families.clone());
        p.collect().await.expect("the process table is readable");
        assert_eq!(families.count.get(&()), Some(0.0));
        assert_eq!(families.start_time.get(&()), None, "absent, not 0");
        assert_eq!(families.resident_memory.get(&()), None, "absent, not 0");
        assert!(!served(&registry, CPU.name), "absent, not 0");
    }
}
