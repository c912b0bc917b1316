//! Logging and tracing. Logs: JSON lines on stderr by default
//! (`--log-format text` for people), filtered by `TALLY_LOG` (default
//! `info`, without the SDK's complaint about responses that came from no
//! connection, which the fault layer's made-up responses trigger).
//!
//! Traces: with `TALLY_OTLP=true`, spans (per shard, per batch, per vote
//! request) are exported over OTLP/HTTP (protobuf) to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`), named
//! by `OTEL_SERVICE_NAME` (default `tally`). Off by default.

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

const DEFAULT_FILTER: &str = "info,aws_smithy_runtime::client::http::connection_poisoning=off";

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: flushing traces failed: {error}");
            }
        }
    }
}

fn otlp_provider() -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|error| format!("invalid OTLP exporter settings: {error}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tally".into());
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// Checks the OTLP endpoint settings, naming the one at fault.
pub fn check_otlp_settings() -> Result<(), String> {
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        if let Ok(value) = std::env::var(name) {
            let ok = reqwest::Url::parse(&value)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
            if !ok {
                return Err(format!(
                    "invalid setting {name}: {value:?} is not an http(s) URL"
                ));
            }
        }
    }
    Ok(())
}

/// Installs the logger, and the trace exporter when `otlp` is set.
pub fn init(format: LogFormat, otlp: bool) -> Telemetry {
    let filter =
        EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, traces, failure) = if otlp {
        match otlp_provider() {
            Ok(provider) => {
                let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tally"));
                (Some(provider), Some(layer), None)
            }
            Err(error) => (None, None, Some(error)),
        }
    } else {
        (None, None, None)
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    if let Some(error) = failure {
        tracing::warn!(error = %error, "traces are off");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { provider }
}
