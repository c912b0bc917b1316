//! One classification of AWS service errors, for every service call.
//!
//! This module owns the mapping from a failed AWS call (its error code, its
//! HTTP status, or the way the response failed to arrive) to an
//! [`ErrorClass`], and the codes that DynamoDB puts inside a
//! `TransactionCanceledException` or a `BatchExecuteStatement` answer. It
//! never retries, sleeps or logs, and never decides what a class means to a
//! caller: each caller maps the class to its own error type.
//!
//! The codes are AWS's:
//! - DynamoDB: <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>
//!   and <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/CommonErrors.html>;
//! - Kinesis: <https://docs.aws.amazon.com/kinesis/latest/APIReference/CommonErrors.html>
//!   and each action's "Errors" section.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What a failed AWS call means to its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A condition expression was false: nothing was written.
    ConditionFailed,
    /// A rate or throughput limit was hit: nothing happened; another try
    /// after a backoff may succeed.
    Throttled,
    /// Another transaction was working on the same items, or a transaction
    /// with the same client token is still in progress; another try after a
    /// backoff may succeed.
    Conflict,
    /// A 5xx answer, a timeout, a lost connection or an unreadable response:
    /// the call MAY have happened.
    Transient,
    /// The table, index, stream or shard does not exist
    /// (`ResourceNotFoundException`).
    NotFound,
    /// The resource already exists, or is being created, updated or deleted
    /// (`ResourceInUseException`).
    InUse,
    /// A Kinesis shard iterator expired: a new one is needed.
    ExpiredIterator,
    /// A client request token was already used with other parameters
    /// (`IdempotentParameterMismatchException`).
    TokenReused,
    /// Anything else (a bad request, no permission, an unknown code): not
    /// worth another try.
    Other,
}

impl ErrorClass {
    /// Every class.
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::ConditionFailed,
        ErrorClass::Throttled,
        ErrorClass::Conflict,
        ErrorClass::Transient,
        ErrorClass::NotFound,
        ErrorClass::InUse,
        ErrorClass::ExpiredIterator,
        ErrorClass::TokenReused,
        ErrorClass::Other,
    ];

    /// Tells whether the same call may succeed if tried again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled | ErrorClass::Conflict | ErrorClass::Transient
        )
    }

    /// A short name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ConditionFailed => "condition_failed",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Transient => "transient",
            ErrorClass::NotFound => "not_found",
            ErrorClass::InUse => "in_use",
            ErrorClass::ExpiredIterator => "expired_iterator",
            ErrorClass::TokenReused => "token_reused",
            ErrorClass::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error code with a class of its own; any other code is
/// [`ErrorClass::Other`] (or [`ErrorClass::Transient`] on a 5xx answer).
///
/// Both forms of a code are here: the exception's name, as the answer to a
/// call gives it, and the short code that DynamoDB gives for one action of a
/// `TransactWriteItems` in the `CancellationReasons` of a
/// `TransactionCanceledException`, or for one statement of a
/// `BatchExecuteStatement` in its `Error.Code`.
const CODES: &[(&str, ErrorClass)] = &[
    (
        "ConditionalCheckFailedException",
        ErrorClass::ConditionFailed,
    ),
    ("ConditionalCheckFailed", ErrorClass::ConditionFailed),
    // DynamoDB and Kinesis: throughput of a table or shard.
    (
        "ProvisionedThroughputExceededException",
        ErrorClass::Throttled,
    ),
    ("ProvisionedThroughputExceeded", ErrorClass::Throttled),
    // Control-plane and account request rates.
    ("ThrottlingException", ErrorClass::Throttled),
    ("ThrottlingError", ErrorClass::Throttled),
    ("RequestLimitExceeded", ErrorClass::Throttled),
    // DynamoDB: too many concurrent control-plane operations; Kinesis: too
    // many calls on a stream or shard. AWS marks both as worth a retry.
    ("LimitExceededException", ErrorClass::Throttled),
    // The callers disagreed here: the vote tables called a transaction
    // conflict a conflict and the lease table throttling, and a transaction
    // still in progress was a conflict to one and not retryable to the
    // other. AWS says a transaction conflict means that another request is
    // working on one of the items, not that a rate limit was hit, and that
    // it is worth a retry; and that a `TransactionInProgressException` is
    // answered by retrying with the same client token, which lets the first
    // transaction complete. Both are conflicts (retryable, and told apart
    // from throttling):
    // <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>,
    // <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html>,
    // <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>.
    ("TransactionConflictException", ErrorClass::Conflict),
    ("TransactionConflict", ErrorClass::Conflict),
    ("TransactionInProgressException", ErrorClass::Conflict),
    // 500 and 503 answers by name (DynamoDB's and Kinesis's).
    ("InternalServerError", ErrorClass::Transient),
    ("InternalFailure", ErrorClass::Transient),
    // Kinesis: a 500 inside a SubscribeToShard event stream (no HTTP
    // status there to fall back on).
    ("InternalFailureException", ErrorClass::Transient),
    ("ServiceUnavailable", ErrorClass::Transient),
    ("ResourceNotFoundException", ErrorClass::NotFound),
    ("ResourceNotFound", ErrorClass::NotFound),
    ("ResourceInUseException", ErrorClass::InUse),
    ("ExpiredIteratorException", ErrorClass::ExpiredIterator),
    (
        "IdempotentParameterMismatchException",
        ErrorClass::TokenReused,
    ),
];

fn known(code: &str) -> Option<ErrorClass> {
    CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, class)| *class)
}

/// Classifies a bare error code: an exception's name, or a short code from
/// cancellation reasons or per-statement errors. Unknown codes (and
/// `"None"`, the reason of an action that did not fail) are
/// [`ErrorClass::Other`].
pub fn classify_code(code: &str) -> ErrorClass {
    known(code).unwrap_or(ErrorClass::Other)
}

/// Classifies a failed call by its error code first, then by its HTTP
/// status (any 5xx answer with an unknown code is transient), then by how
/// it failed: a timeout, a dispatch failure (no answer came) or an
/// unreadable answer is transient, since the call may have happened; a
/// request that could not be built is [`ErrorClass::Other`].
pub fn classify<E>(error: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata,
{
    match error {
        SdkError::ServiceError(service) => match error.code().and_then(known) {
            Some(class) => class,
            None if service.raw().status().is_server_error() => ErrorClass::Transient,
            None => ErrorClass::Other,
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Other,
    }
}

/// Classifies a `TransactionCanceledException` by its cancellation
/// reasons' codes, one per action, `"None"` for the actions that did not
/// fail. A retryable reason wins (throttled first, then conflict, then
/// transient), then a failed condition, then the first other reason given.
/// A cancellation that names no reason at all is [`ErrorClass::Other`]:
/// nothing says that another try would fare better.
///
/// A caller that conditions one particular action (say, a fence) looks at
/// that action's reason itself, with [`classify_code`], before this.
pub fn classify_cancellation<'a>(codes: impl IntoIterator<Item = &'a str>) -> ErrorClass {
    let classes: Vec<ErrorClass> = codes
        .into_iter()
        .filter(|code| !code.is_empty() && *code != "None")
        .map(classify_code)
        .collect();
    [
        ErrorClass::Throttled,
        ErrorClass::Conflict,
        ErrorClass::Transient,
        ErrorClass::ConditionFailed,
    ]
    .into_iter()
    .find(|class| classes.contains(class))
    .or_else(|| classes.first().copied())
    .unwrap_or(ErrorClass::Other)
}

/// Describes a failed call for an error message: `code: message` when the
/// service named the error, and the whole chain of causes otherwise (a
/// timeout, a dispatch failure, an unreadable answer).
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error.code() {
        Some(code) if !code.is_empty() => {
            format!("{code}: {}", error.message().unwrap_or("no message"))
        }
        _ => DisplayErrorContext(error).to_string(),
    }
}

/// A failed AWS call, classified and described.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AwsError {
    pub class: ErrorClass,
    pub message: String,
}

impl AwsError {
    /// Classifies and describes `error` (see [`classify`] and [`describe`]).
    pub fn from_sdk<E>(error: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Self {
            class: classify(error),
            message: describe(error),
        }
    }
}

impl<E> From<SdkError<E, HttpResponse>> for AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    fn from(error: SdkError<E, HttpResponse>) -> Self {
        Self::from_sdk(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use ErrorClass::*;

    /// Every code with a class of its own, written out again by hand.
    const EXPECTED: &[(&str, ErrorClass)] = &[
        ("ConditionalCheckFailedException", ConditionFailed),
        ("ConditionalCheckFailed", ConditionFailed),
        ("ProvisionedThroughputExceededException", Throttled),
        ("ProvisionedThroughputExceeded", Throttled),
        ("ThrottlingException", Throttled),
        ("ThrottlingError", Throttled),
        ("RequestLimitExceeded", Throttled),
        ("LimitExceededException", Throttled),
        ("TransactionConflictException", Conflict),
        ("TransactionConflict", Conflict),
        ("TransactionInProgressException", Conflict),
        ("InternalServerError", Transient),
        ("InternalFailure", Transient),
        ("InternalFailureException", Transient),
        ("ServiceUnavailable", Transient),
        ("ResourceNotFoundException", NotFound),
        ("ResourceNotFound", NotFound),
        ("ResourceInUseException", InUse),
        ("ExpiredIteratorException", ExpiredIterator),
        ("IdempotentParameterMismatchException", TokenReused),
    ];

    /// Codes that have no class of their own.
    const UNKNOWN: &[&str] = &[
        "",
        "None",
        "ValidationException",
        "ValidationError",
        "AccessDeniedException",
        "ItemCollectionSizeLimitExceeded",
        "TransactionCanceledException",
        "SomethingNew",
        // Near misses: matching is exact.
        "throttlingexception",
        "Throttling",
    ];

    fn answer(code: &str, status: u16) -> SdkError<ErrorMetadata, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("the message");
        if !code.is_empty() {
            meta = meta.code(code);
        }
        SdkError::service_error(
            meta.build(),
            HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::empty(),
            ),
        )
    }

    #[test]
    fn every_known_code_is_tested() {
        assert_eq!(CODES.len(), EXPECTED.len());
        for (code, class) in CODES {
            assert!(
                EXPECTED.contains(&(code, *class)),
                "{code} ({class}) is not in the test's table"
            );
        }
    }

    #[test]
    fn bare_codes() {
        for (code, class) in EXPECTED {
            assert_eq!(classify_code(code), *class, "{code}");
        }
        for code in UNKNOWN {
            assert_eq!(classify_code(code), Other, "{code}");
        }
    }

    #[test]
    fn service_errors_by_code_whatever_the_status() {
        for (code, class) in EXPECTED {
            for status in [400, 500, 503] {
                assert_eq!(classify(&answer(code, status)), *class, "{code} {status}");
            }
        }
    }

    #[test]
    fn unknown_codes_by_status() {
        for code in UNKNOWN {
            for (status, class) in [
                (400, Other),
                (403, Other),
                (404, Other),
                (429, Other),
                (499, Other),
                (500, Transient),
                (502, Transient),
                (503, Transient),
                (504, Transient),
                (599, Transient),
            ] {
                assert_eq!(classify(&answer(code, status)), class, "{code:?} {status}");
            }
        }
    }

    #[test]
    fn failures_without_an_answer() {
        let raw =
            || HttpResponse::new(StatusCode::try_from(200).expect("status"), SdkBody::empty());
        let cases: Vec<(SdkError<ErrorMetadata, HttpResponse>, ErrorClass)> = vec![
            (SdkError::timeout_error("attempt timed out"), Transient),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into())),
                Transient,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::io("connection reset".into())),
                Transient,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::other("refused".into(), None)),
                Transient,
            ),
            (SdkError::response_error("truncated body", raw()), Transient),
            (SdkError::construction_failure("no table name"), Other),
        ];
        for (error, class) in cases {
            assert_eq!(classify(&error), class, "{error:?}");
            assert!(!describe(&error).is_empty());
        }
    }

    #[test]
    fn retryable_classes() {
        let retryable: Vec<ErrorClass> = ErrorClass::ALL
            .into_iter()
            .filter(|class| class.is_retryable())
            .collect();
        assert_eq!(retryable, [Throttled, Conflict, Transient]);
    }

    #[test]
    fn cancellations() {
        for (codes, class) in [
            (&["None", "ThrottlingError"][..], Throttled),
            (&["ProvisionedThroughputExceeded", "None"][..], Throttled),
            (&["TransactionConflict", "ThrottlingError"][..], Throttled),
            (&["None", "TransactionConflict"][..], Conflict),
            (
                &["ConditionalCheckFailed", "TransactionConflict"][..],
                Conflict,
            ),
            (&["ConditionalCheckFailed", "None"][..], ConditionFailed),
            (
                &["ValidationError", "ConditionalCheckFailed"][..],
                ConditionFailed,
            ),
            (&["None", "ValidationError"][..], Other),
            (&["ItemCollectionSizeLimitExceeded"][..], Other),
            (&["None", "None"][..], Other),
            (&[][..], Other),
        ] {
            assert_eq!(
                classify_cancellation(codes.iter().copied()),
                class,
                "{codes:?}"
            );
        }
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            describe(&answer("ThrottlingException", 400)),
            "ThrottlingException: the message"
        );
        let error = AwsError::from(answer("ResourceNotFoundException", 400));
        assert_eq!(error.class, NotFound);
        assert_eq!(error.to_string(), "ResourceNotFoundException: the message");
        let timeout: SdkError<ErrorMetadata, HttpResponse> = SdkError::timeout_error("slow");
        assert!(
            describe(&timeout).contains("timed out"),
            "{}",
            describe(&timeout)
        );
    }
}
