//! Fault injection, for tests of what clients do when terminals and networks misbehave.

use std::time::Duration;

/// Faults applied to the terminal's replies. Probabilities are in 0.0..=1.0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added before every reply.
    pub latency: Duration,
    /// Probability that a reply packet is not sent (over TCP the session then stalls, as with a hung terminal).
    pub drop_rate: f64,
    /// Probability that a reply packet has one byte flipped (after its checksum was computed).
    pub corrupt_rate: f64,
    /// Close the connection after this many `CMD_DATA` packets of a bulk read were sent.
    pub cut_bulk_after: Option<u64>,
    /// Stop answering anything at all (the terminal hangs, the socket stays open).
    pub mute: bool,
    /// Announce no punches: subscribed sessions get no realtime events (as when events are lost on the way), so
    /// only reads of the log see new punches.
    pub no_events: bool,
    /// Seed of the fault dice.
    pub seed: u64,
}

impl Faults {
    /// Parses `key=value[,key=value...]`: `latency-ms`, `drop`, `corrupt`, `cut-bulk-after`, `mute`, `no-events`,
    /// `seed`.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, "true"));
            let bad = |what: &str| format!("fault {key:?}: {what}, got {value:?}");
            let prob = |v: &str| match v.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                _ => Err(bad("want a probability between 0 and 1")),
            };
            match key {
                "latency-ms" => f.latency = Duration::from_millis(value.parse().map_err(|_| bad("want ms"))?),
                "drop" => f.drop_rate = prob(value)?,
                "corrupt" => f.corrupt_rate = prob(value)?,
                "cut-bulk-after" => f.cut_bulk_after = Some(value.parse().map_err(|_| bad("want a count"))?),
                "mute" => f.mute = value.parse().map_err(|_| bad("want true or false"))?,
                "no-events" => f.no_events = value.parse().map_err(|_| bad("want true or false"))?,
                "seed" => f.seed = value.parse().map_err(|_| bad("want an integer"))?,
                _ => {
                    return Err(format!(
                        "unknown fault {key:?} (known: latency-ms, drop, corrupt, cut-bulk-after, mute, no-events, seed)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let f = Faults::parse("latency-ms=5, drop=0.1,cut-bulk-after=3").expect("valid");
        assert_eq!(f.latency, Duration::from_millis(5));
        assert_eq!(f.drop_rate, 0.1);
        assert_eq!(f.cut_bulk_after, Some(3));
        assert!(Faults::parse("no-events").expect("valid").no_events);
        assert!(Faults::parse("drop=2").is_err());
        assert!(Faults::parse("explode").is_err());
    }
}
