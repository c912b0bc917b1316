//! Logging: JSON lines on stderr by default (`--log-format text` for people),
//! filtered by `TALLY_LOG` (default `info`, without the SDK's complaint
//! about responses that came from no connection, which the fault layer's
//! made-up responses trigger).

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

const DEFAULT_FILTER: &str = "info,aws_smithy_runtime::client::http::connection_poisoning=off";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
