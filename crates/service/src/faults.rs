//! The fault-injection switches of `tally worker` and `tally gateway`
//! (`TALLY_FAULTS`, `TALLY_FAULTS_SEED`, `TALLY_CRASH_POINT`). The fault
//! layer itself (`tally-faults`) is compiled in only with this crate's
//! `faults` feature, which the tests, the chaos run and the benchmarks
//! turn on and release builds never do. Without it, [`Faults`] has no
//! values and any fault setting fails at start naming the setting.

use std::sync::Arc;

/// The fault layer of this build.
#[cfg(feature = "faults")]
pub use tally_faults::Faults;

/// The fault layer of a build without the `faults` feature: there is none,
/// so this type has no values.
#[cfg(not(feature = "faults"))]
#[derive(Debug)]
pub enum Faults {}

#[cfg(not(feature = "faults"))]
impl Faults {
    /// Injected fault counts as JSON (never called: there are no faults).
    pub fn injected_json(&self) -> serde_json::Value {
        match *self {}
    }
}

/// What a fault setting given to a build without fault injection says.
#[cfg(not(feature = "faults"))]
const NOT_BUILT: &str = "this build has no fault injection (it was built without the `faults` feature, like every release build)";

/// A process's request-fault switches (the worker's and the gateway's).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FaultArgs {
    /// TESTING ONLY (builds with the `faults` feature): faults to inject
    /// into AWS requests, `OPERATION:KIND:PROBABILITY[:MILLIS],...` (kinds:
    /// throttle, conflict, 5xx, latency, lost, partial).
    #[arg(long, env = "TALLY_FAULTS")]
    pub faults: Option<String>,
    /// Seed of the fault injection's random choices.
    #[arg(long, env = "TALLY_FAULTS_SEED", default_value_t = 1)]
    pub faults_seed: u64,
}

impl FaultArgs {
    /// The parsed faults (`None` when off), naming the setting at fault.
    pub fn parse(&self) -> anyhow::Result<Option<Arc<Faults>>> {
        let Some(spec) = &self.faults else {
            return Ok(None);
        };
        #[cfg(feature = "faults")]
        {
            let faults = Faults::parse(spec, self.faults_seed)
                .map_err(|error| anyhow::anyhow!("invalid setting TALLY_FAULTS: {error}"))?;
            tracing::warn!(faults = %spec, "fault injection is on: AWS requests will fail on purpose");
            Ok(Some(Arc::new(faults)))
        }
        #[cfg(not(feature = "faults"))]
        {
            anyhow::bail!("invalid setting TALLY_FAULTS ({spec:?}): {NOT_BUILT}")
        }
    }
}

/// Arms the crash point `NAME[:N]` for this process, naming the setting at
/// fault.
pub fn arm_crash_point(spec: &str) -> anyhow::Result<()> {
    #[cfg(feature = "faults")]
    {
        tally_faults::arm_crash_point(spec)
            .map_err(|error| anyhow::anyhow!("invalid setting TALLY_CRASH_POINT: {error}"))
    }
    #[cfg(not(feature = "faults"))]
    {
        anyhow::bail!("invalid setting TALLY_CRASH_POINT ({spec:?}): {NOT_BUILT}")
    }
}

/// `config` with every request going through `faults`, when given.
pub fn wrap_config(
    config: aws_config::SdkConfig,
    faults: Option<&Arc<Faults>>,
) -> aws_config::SdkConfig {
    match faults {
        None => config,
        #[cfg(feature = "faults")]
        Some(faults) => tally_faults::wrap_config(config, faults),
        #[cfg(not(feature = "faults"))]
        Some(faults) => match **faults {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "faults"))]
    #[test]
    fn a_build_without_the_feature_refuses_fault_settings() {
        let args = FaultArgs {
            faults: Some("PutItem:throttle:1".into()),
            faults_seed: 1,
        };
        let error = args.parse().unwrap_err().to_string();
        assert!(error.contains("TALLY_FAULTS"), "{error}");
        let error = arm_crash_point("after_puts").unwrap_err().to_string();
        assert!(error.contains("TALLY_CRASH_POINT"), "{error}");
        assert!(FaultArgs::default().parse().unwrap().is_none());
    }

    #[cfg(feature = "faults")]
    #[test]
    fn a_build_with_the_feature_parses_fault_settings() {
        let args = FaultArgs {
            faults: Some("PutItem:throttle:1".into()),
            faults_seed: 1,
        };
        assert!(args.parse().unwrap().is_some());
        let bad = FaultArgs {
            faults: Some("PutItem:explode:1".into()),
            faults_seed: 1,
        };
        assert!(bad
            .parse()
            .unwrap_err()
            .to_string()
            .contains("TALLY_FAULTS"));
    }
}
