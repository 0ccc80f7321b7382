//! The one way the suites wait: poll until a check passes, or fail naming what was awaited and
//! what was seen last.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] tries again.
const INTERVAL: Duration = Duration::from_millis(100);

/// What a check returns: a success, or what it saw instead (printed if the wait times out).
pub trait Attempt {
    type Ok;
    type Seen: Display;
    fn attempt(self) -> Result<Self::Ok, Self::Seen>;
}

/// `None` sees nothing worth printing; return a `Result` to report the last value.
impl<T> Attempt for Option<T> {
    type Ok = T;
    type Seen = &'static str;
    fn attempt(self) -> Result<T, &'static str> {
        self.ok_or("None")
    }
}

impl<T, E: Display> Attempt for Result<T, E> {
    type Ok = T;
    type Seen = E;
    fn attempt(self) -> Result<T, E> {
        self
    }
}

/// Runs `check` every 100 ms until it succeeds, and returns its value. After `timeout` it panics
/// with `what` and the last thing `check` saw. A single attempt is cut off at the deadline too
/// (with at least a second to run), so a hung request cannot make the wait unbounded.
pub async fn eventually<F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> <Fut::Output as Attempt>::Ok
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Attempt,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let seen = match tokio::time::timeout(budget, check()).await {
            Ok(outcome) => match outcome.attempt() {
                Ok(v) => return v,
                Err(seen) => seen,
            },
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}: attempt {tries} did not finish"
            ),
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} ({tries} attempts) waiting for {what}; last seen:\n{seen}"
            );
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
