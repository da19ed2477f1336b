//! Retry delays as pure functions, the only ones posd uses: for the reversal queue, the print
//! worker and a payment task's failed commits, exponential from an initial delay
//! (`queue_backoff_initial`, `printer.retry_initial`), doubling per attempt, capped
//! (`queue_backoff_max`, `printer.retry_max`), with jitter that only ever shortens a delay (so
//! the cap holds) and never by more than a quarter; for the resends of an unanswered cancel or
//! refund, a pause drawn between two bounds (`cancel_retry_min`..`cancel_retry_max`).

use std::time::Duration;

/// The largest share of a delay that jitter removes.
pub const JITTER: f64 = 0.25;

/// The delay after `attempts` failed sends: `initial × 2^attempts`, at most `max`. Saturates
/// instead of overflowing for any attempt count.
pub fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    // 2^31 × any initial above a nanosecond already exceeds every sane cap.
    let factor = 1u32 << attempts.min(31);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// `delay` shortened by `unit × JITTER` of itself, `unit` in `[0, 1)` (random in the worker),
/// so replayers that failed together spread out.
pub fn jittered(delay: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    delay.mul_f64(1.0 - JITTER * unit)
}

/// A pause in `[min, max]` chosen by `unit` in `[0, 1)` (random in the caller); `min` when
/// the bounds are equal or reversed.
pub fn between(min: Duration, max: Duration, unit: f64) -> Duration {
    if max <= min {
        return min;
    }
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    min + (max - min).mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_initial_to_the_cap() {
        let (i, m) = (Duration::from_secs(30), Duration::from_secs(600));
        let got: Vec<u64> = (0..7).map(|a| backoff(a, i, m).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(u32::MAX, i, m), m);
        // An initial above the cap is capped too.
        assert_eq!(backoff(0, Duration::from_secs(900), m), m);
    }

    #[test]
    fn jitter_only_shortens_by_at_most_a_quarter() {
        assert_eq!(
            jittered(Duration::from_secs(100), 0.0),
            Duration::from_secs(100)
        );
        assert_eq!(
            jittered(Duration::from_secs(100), 1.0),
            Duration::from_secs(75)
        );
        assert_eq!(
            jittered(Duration::from_secs(100), f64::NAN),
            Duration::from_secs(100)
        );
        assert_eq!(
            jittered(Duration::from_secs(100), -3.0),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn between_spans_the_bounds_and_never_leaves_them() {
        let (lo, hi) = (Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(between(lo, hi, 0.0), lo);
        assert_eq!(between(lo, hi, 0.5), Duration::from_millis(7500));
        assert_eq!(between(lo, hi, 1.0), hi);
        assert_eq!(between(lo, hi, 7.0), hi);
        assert_eq!(between(lo, hi, f64::NAN), lo);
        // Reversed or equal bounds: the lower one.
        assert_eq!(between(hi, lo, 0.9), hi);
        assert_eq!(between(lo, lo, 0.9), lo);
    }

    proptest! {
        #[test]
        fn monotonic_capped_and_never_overflowing(
            a in any::<u32>(),
            initial_ms in 0u64..=86_400_000,
            max_ms in 0u64..=u64::MAX / 2,
        ) {
            let (i, m) = (Duration::from_millis(initial_ms), Duration::from_millis(max_ms));
            let d = backoff(a, i, m);
            prop_assert!(d <= m);
            prop_assert!(d >= i.min(m));
            prop_assert!(backoff(a.saturating_add(1), i, m) >= d);
        }

        #[test]
        fn jittered_stays_within_three_quarters_and_the_delay(
            ms in 0u64..=10_000_000_000,
            unit in 0.0f64..1.0,
        ) {
            let d = Duration::from_millis(ms);
            let j = jittered(d, unit);
            prop_assert!(j <= d);
            prop_assert!(j >= d.mul_f64(0.75).saturating_sub(S / 1000));
        }
    }
}
