//! chirp's own process, as every Prometheus client library exports it
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …): read
//! from `/proc` at each scrape, by the `procfs` crate.

/// One reading of the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessRow {
    /// User and system CPU time, in seconds (to the kernel's clock tick).
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    /// The soft limit; `None` when unlimited.
    pub max_fds: Option<f64>,
    /// Unix seconds.
    pub start_time: f64,
}

impl ProcessRow {
    /// Reads this process; `None` where `/proc` cannot be read (not Linux,
    /// or a sandbox hiding it): the metrics are then left out, never zero.
    #[cfg(target_os = "linux")]
    pub fn read() -> Option<ProcessRow> {
        use procfs::process::{LimitValue, Process};
        let me = Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        let boot = procfs::boot_time_secs().ok()? as f64;
        Some(ProcessRow {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: (stat.rss * procfs::page_size()) as f64,
            virtual_bytes: stat.vsize as f64,
            open_fds: me.fd_count().ok()? as f64,
            max_fds: match me.limits().ok()?.max_open_files.soft_limit {
                LimitValue::Value(n) => Some(n as f64),
                LimitValue::Unlimited => None,
            },
            start_time: boot + stat.starttime as f64 / ticks,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Option<ProcessRow> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::ProcessRow;

    #[test]
    fn this_process_is_read_as_the_kernel_sees_it() {
        let before = ProcessRow::read().expect("/proc/self");
        // Spins until the CPU counter moves (a clock tick is 10 ms); on a
        // loaded machine that may take more wall time, never 10 s.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        let after = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = ProcessRow::read().unwrap();
            if now.cpu_seconds > before.cpu_seconds {
                break now;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "CPU time stood still: {now:?}"
            );
        };
        // (Descriptors moving with connections: tests/exports/catalogue.rs.)
        assert!(
            after.open_fds >= 3.0 && after.resident_bytes > 1e6,
            "{after:?}"
        );
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0;
        assert_eq!(after.max_fds, Some(limit as f64));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started before now, and not before this test binary could have.
        assert!(
            after.start_time <= now + 1.0 && after.start_time > now - 3600.0,
            "{after:?}"
        );
    }
}
