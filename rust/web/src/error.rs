//! Why a page cannot be shown, and the HTTP status that says so: a request that lacks what it
//! must name is 400, one that names nothing there is 404, a CAS that cannot be read is 5xx.

use clientd_activity::ExplainError;
use clientd_store::StoreError;
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A parameter is missing or malformed, or the request asks for more than a page shows.
    #[error("{0}")]
    BadRequest(String),
    /// No activity record, or no such invocation, action or blob in it.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    /// Reading a blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PageError {
    pub fn status(&self) -> StatusCode {
        match self {
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::NotFound(_)
            | PageError::Explain(_)
            | PageError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            // A cluster that is down or slow: worth trying again.
            PageError::Store(StoreError::Unavailable(_) | StoreError::DeadlineExceeded(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PageError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn bad_request(why: impl Into<String>) -> Self {
        PageError::BadRequest(why.into())
    }

    pub(crate) fn not_found(why: impl Into<String>) -> Self {
        PageError::NotFound(why.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_the_status_a_browser_or_script_acts_on() {
        let m = || "m".to_string();
        for (e, status) in [
            (PageError::bad_request("which blob?"), 400),
            (PageError::not_found("no invocation"), 404),
            (ExplainError::EmptyRecord.into(), 404),
            (StoreError::NotFound(m()).into(), 404),
            (StoreError::Unavailable(m()).into(), 503),
            (StoreError::DeadlineExceeded(m()).into(), 503),
            (StoreError::Internal(m()).into(), 500),
        ] {
            assert_eq!(e.status().as_u16(), status, "{e}");
        }
    }
}
