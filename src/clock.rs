//! The store's clock, estimated from the `Date` headers of its responses (docs/design.md, rule 7).
//!
//! A `Date` header has one-second resolution and is stamped somewhere between our request
//! leaving and its reply arriving. Each response therefore bounds the offset between the
//! store's clock and our *monotonic* clock; intersecting those bounds narrows it. The local
//! wall clock is never consulted once a store has answered, so a runner whose clock is ten
//! minutes off (or runs at the wrong rate) still agrees with the store.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Tokio's monotonic clock (the system's, unless a test pauses it), so that lease ends and
// waits move in a paused test's virtual time like everything else.
use tokio::time::Instant;

/// Store-clock estimate shared by every request of one store client.
#[derive(Debug)]
pub struct StoreClock {
    base: Instant,
    /// Read the kernel's clock directly (the file store: the host is the store).
    kernel: bool,
    /// Bounds on (store unix ms) - (ms since `base`).
    bounds: Mutex<Option<(i64, i64)>>,
}

impl Default for StoreClock {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreClock {
    /// A clock with no samples: it reads the local wall clock until the store answers.
    pub fn new() -> Self {
        StoreClock {
            base: Instant::now(),
            kernel: false,
            bounds: Mutex::new(None),
        }
    }

    /// A clock that knows the store's time exactly: `now_ms` now, moving on with the
    /// monotonic clock (the in-memory store's: under a paused clock, store time moves exactly
    /// as far as the test advances it).
    pub fn starting_at(now_ms: i64) -> Self {
        let clock = Self::new();
        let now = Instant::now();
        clock.observe(now, now, now_ms, Duration::ZERO);
        clock
    }

    /// The clock of a store on this host: the kernel's real-time clock, read with a raw
    /// system call so that a process whose time is faked (LD_PRELOAD time shifters) still
    /// agrees with every other process on the host.
    pub fn kernel() -> Self {
        StoreClock { kernel: true, ..Self::new() }
    }

    fn mono_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.base).as_millis() as i64
    }

    /// Records one response: `stamp_ms` was taken by the store at some instant between
    /// `sent` and `received`, and may be up to `resolution` below the true time.
    pub fn observe(&self, sent: Instant, received: Instant, stamp_ms: i64, resolution: Duration) {
        let lo = stamp_ms - self.mono_ms(received);
        let hi = stamp_ms + resolution.as_millis() as i64 - self.mono_ms(sent);
        let mut bounds = self.bounds.lock().unwrap_or_else(|e| e.into_inner());
        *bounds = match *bounds {
            Some((l, h)) if lo.max(l) <= hi.min(h) => Some((lo.max(l), hi.min(h))),
            // Empty intersection: the store's clock was stepped. Trust the newest sample.
            _ => Some((lo, hi)),
        };
    }

    /// Records an HTTP `Date` header value; ignores what does not parse.
    pub fn observe_http_date(&self, sent: Instant, received: Instant, date: &str) {
        use aws_smithy_types::date_time::{DateTime, Format};
        if let Ok(t) = DateTime::from_str(date, Format::HttpDate) {
            self.observe(sent, received, t.to_millis().unwrap_or(0), Duration::from_secs(1));
        }
    }

    /// Has any store response been seen?
    pub fn is_synced(&self) -> bool {
        self.kernel || self.bounds.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Current store time in unix milliseconds: the middle of the known bounds, or the local
    /// wall clock before the first response.
    pub fn now_ms(&self) -> i64 {
        match *self.bounds.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((lo, hi)) => (lo + hi) / 2 + self.mono_ms(Instant::now()),
            None if self.kernel => kernel_wall_ms(),
            None => local_wall_ms(),
        }
    }

    /// Half the width of the current bounds: how far `now_ms` may be off.
    pub fn uncertainty(&self) -> Duration {
        match *self.bounds.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((lo, hi)) => Duration::from_millis(((hi - lo).max(0) / 2) as u64),
            None => Duration::ZERO,
        }
    }
}

/// The local wall clock in unix milliseconds.
/// A duration in ms for store-time arithmetic, saturating at a quarter of `i64::MAX` so that
/// a few of them added to a store time cannot overflow (durations are capped at a century
/// anyway, see `cli::parse_duration`).
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Store ms as an RFC 3339 time to the second, for messages.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// This machine's wall clock in unix ms.
pub fn local_wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// CLOCK_REALTIME straight from the kernel, bypassing libc (and anything interposed on it).
#[cfg(target_os = "linux")]
pub fn kernel_wall_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the pointer we pass, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts as *mut libc::timespec) };
    if rc != 0 {
        return local_wall_ms();
    }
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// CLOCK_REALTIME (no raw system call off Linux).
#[cfg(not(target_os = "linux"))]
pub fn kernel_wall_ms() -> i64 {
    local_wall_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_narrow_the_offset() {
        let c = StoreClock::new();
        let t0 = c.base;
        // Store time at base is 1_000_000.5 s; Date headers truncate to the second.
        let store_at = |i: Instant| 1_000_000_500 + (i - t0).as_millis() as i64;
        let truncate = |ms: i64| ms / 1000 * 1000;
        for k in 0..5u64 {
            let sent = t0 + Duration::from_millis(300 * k);
            let recv = sent + Duration::from_millis(20);
            c.observe(sent, recv, truncate(store_at(sent + Duration::from_millis(10))), Duration::from_secs(1));
        }
        let est = c.now_ms();
        let truth = store_at(Instant::now());
        assert!((est - truth).abs() <= 520, "estimate {est} vs truth {truth}");
        assert!(c.uncertainty() <= Duration::from_millis(520));
    }

    #[test]
    fn a_stepped_store_clock_resets_the_estimate() {
        let c = StoreClock::new();
        let now = Instant::now();
        c.observe(now, now, 10_000, Duration::from_secs(1));
        c.observe(now, now, 900_000, Duration::from_secs(1));
        assert!((c.now_ms() - 900_500).abs() < 1_000);
    }

    #[test]
    fn unsynced_clock_reads_local_time() {
        let c = StoreClock::new();
        assert!(!c.is_synced());
        assert!((c.now_ms() - local_wall_ms()).abs() < 1_000);
    }

    #[test]
    fn kernel_clock_agrees_with_an_unfaked_wall_clock() {
        assert!((StoreClock::kernel().now_ms() - local_wall_ms()).abs() < 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_moves_with_paused_time_only() {
        let c = StoreClock::starting_at(1_000_000);
        assert!(c.is_synced());
        let t0 = c.now_ms();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now_ms() - t0, 3_600_000);
        assert_eq!(c.uncertainty(), Duration::ZERO);
    }

    #[test]
    fn parses_http_dates() {
        let c = StoreClock::new();
        let now = Instant::now();
        c.observe_http_date(now, now, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!((c.now_ms() - 784_111_777_500).abs() < 1_000);
    }
}
