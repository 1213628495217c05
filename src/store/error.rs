//! What went wrong talking to ClickHouse, classified by what the caller should do about it.

/// A failure talking to ClickHouse, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Network trouble, timeouts, overload, a full disk: try again later; nothing was stored,
    /// or (for an insert) it is not known whether it was.
    #[error("clickhouse unavailable: {0}")]
    Unavailable(String),
    /// ClickHouse refused the statement itself; retrying the same thing will fail again.
    #[error("clickhouse rejected the request: {0}")]
    Rejected(String),
    /// A read of a request went past its time or memory budget (`--read-timeout-s`,
    /// `--read-memory-bytes`): the request asks too much, retrying will not help.
    #[error("the read exceeded its budget: {0}")]
    OverBudget(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The error of a read made through [`Store::reader`](super::Store::reader): its own budget's limits are
    /// `OverBudget`, anything else as any statement's.
    pub fn from_read(err: clickhouse::error::Error) -> Self {
        if let clickhouse::error::Error::BadResponse(message) = &err {
            let own_limit = match server_code(message) {
                // TIMEOUT_EXCEEDED, TOO_SLOW: only the reader sets max_execution_time.
                Some(159 | 160) => true,
                // MEMORY_LIMIT_EXCEEDED of this query, not of the whole server.
                Some(241) => message.contains("for query"),
                _ => false,
            };
            if own_limit {
                return Self::OverBudget(message.lines().next().unwrap_or_default().to_owned());
            }
        }
        err.into()
    }
}

/// ClickHouse server error codes that describe a passing condition, not a bad statement.
const RETRYABLE_CODES: &[u32] = &[
    159,  // TIMEOUT_EXCEEDED
    164,  // READONLY (e.g. read-only disk, replica in read-only mode)
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    241,  // MEMORY_LIMIT_EXCEEDED
    243,  // NOT_ENOUGH_SPACE
    225,  // NO_ZOOKEEPER
    242,  // TABLE_IS_READ_ONLY (a replicated table without ZooKeeper)
    252,  // TOO_MANY_PARTS
    285,  // TOO_FEW_LIVE_REPLICAS (fewer replicas than --insert-quorum answer)
    286,  // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319,  // UNKNOWN_STATUS_OF_INSERT (the quorum was not reached in time)
    999,  // KEEPER_EXCEPTION
    425,  // SYSTEM_ERROR (errno, e.g. EROFS / ENOSPC)
    1000, // POCO_EXCEPTION (I/O errors, cannot write to file)
    1001, // STD_EXCEPTION
];

fn server_code(message: &str) -> Option<u32> {
    let rest = message.split("Code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl From<clickhouse::error::Error> for StoreError {
    fn from(err: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        // With its causes, so that a refused certificate or a refused connection says so.
        let mut text = err.to_string();
        for cause in std::iter::successors(std::error::Error::source(&err), |e| e.source()) {
            let cause = cause.to_string();
            if !text.contains(&cause) {
                text = format!("{text}: {cause}");
            }
        }
        match &err {
            E::Network(_) | E::TimedOut => Self::Unavailable(text),
            E::BadResponse(message) => match server_code(message) {
                Some(code) if !RETRYABLE_CODES.contains(&code) => Self::Rejected(text),
                // Unknown shape (a proxy page, a truncated body): treat as passing trouble.
                _ => Self::Unavailable(text),
            },
            _ => Self::Rejected(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_read_from_exception_text() {
        assert_eq!(
            server_code("Code: 243, e.displayText() = DB::Exception: no space"),
            Some(243)
        );
        assert_eq!(
            server_code("bad response: Code: 62. DB::Exception: Syntax error"),
            Some(62)
        );
        assert_eq!(server_code("gateway timeout"), None);
    }
}
