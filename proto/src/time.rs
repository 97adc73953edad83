//! The one set of conversions between std's time types and protobuf's
//! `Timestamp` and `Duration`, for every crate of ours. Out-of-range
//! values saturate rather than fail: a clock before 1970 reads as the
//! epoch, a negative protobuf duration as zero (callers that must refuse
//! one check the sign first).

use std::time::{Duration, SystemTime};

use crate::protobuf;

/// Whole seconds since the Unix epoch, now (0 before it).
pub fn unix_now() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

/// Now, as a protobuf timestamp.
pub fn now() -> protobuf::Timestamp {
    timestamp(SystemTime::now())
}

/// `at` as a protobuf timestamp (before the epoch: the epoch).
pub fn timestamp(at: SystemTime) -> protobuf::Timestamp {
    let since = since_epoch(at);
    protobuf::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9: always fits.
        nanos: since.subsec_nanos() as i32,
    }
}

/// `at` as a `SystemTime` (negative parts count as zero).
pub fn system_time(at: &protobuf::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + std_duration_of(at.seconds, at.nanos)
}

/// `d` as a protobuf duration.
pub fn duration(d: Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9: always fits.
        nanos: d.subsec_nanos() as i32,
    }
}

/// `d` as a std `Duration` (negative parts count as zero).
pub fn std_duration(d: &protobuf::Duration) -> Duration {
    std_duration_of(d.seconds, d.nanos)
}

fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn std_duration_of(seconds: i64, nanos: i32) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_survives_the_round_trip_to_the_nanosecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let t = timestamp(at);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
        assert_eq!(system_time(&t), at);
        let d = Duration::new(90, 5);
        let p = duration(d);
        assert_eq!((p.seconds, p.nanos), (90, 5));
        assert_eq!(std_duration(&p), d);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(timestamp(before), protobuf::Timestamp::default());
        let negative = protobuf::Duration {
            seconds: -3,
            nanos: -1,
        };
        assert_eq!(std_duration(&negative), Duration::ZERO);
        let t = protobuf::Timestamp {
            seconds: -1,
            nanos: 7,
        };
        assert_eq!(
            system_time(&t),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(7)
        );
        assert_eq!(duration(Duration::MAX).seconds, i64::MAX);
    }

    #[test]
    fn unix_now_is_now() {
        let now = unix_now();
        assert!(now > 1_700_000_000, "{now}");
        assert!(now.abs_diff(now_seconds()) <= 1);
    }

    fn now_seconds() -> u64 {
        u64::try_from(now().seconds).unwrap()
    }
}
