//! What the master accepts: sizes of requests, fields and marshalled
//! documents, connections and their timeouts (`[slapproxy]` options, stated
//! in the README's "Limits" section).

use std::time::Duration;

use slapos_config::Config;

/// Per-request limits (`[slapproxy] max_request_size`, `max_field_size`,
/// `max_fields`, `decode_workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond).
    pub max_request_size: usize,
    /// Largest value of one form field or query argument, in bytes (413
    /// beyond), except the free-text `error_log` and `message`, which are
    /// stored cut to their last [`crate::master::MAX_STORED_MESSAGE`] bytes.
    pub max_field_size: usize,
    /// Most fields in one form or query (400 beyond).
    pub max_fields: usize,
    /// Requests whose form is parsed and decoded at once, on the blocking
    /// pool (never on the threads that serve connections).
    pub decode_workers: usize,
    /// Bounds of each marshalled field.
    pub marshal: slap::marshal::Limits,
    /// Largest answer `/http_proxy/` relays, in bytes (502 beyond).
    pub relay_max_response: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_size: 16 << 20,
            max_field_size: 4 << 20,
            max_fields: 64,
            decode_workers: 4,
            marshal: slap::marshal::Limits::default(),
            relay_max_response: 16 << 20,
        }
    }
}

/// Connection handling (`[slapproxy] max_connections`, `header_timeout`,
/// `idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Open connections at most (also kept 64 below the process's descriptor
    /// limit). A new connection beyond it closes the one that has waited
    /// longest without a request in progress.
    pub max_connections: usize,
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// A connection without a request in progress and without a byte received
    /// (after accept, or between keep-alive requests) is closed after it.
    pub idle_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections { max_connections: 512, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) }
    }
}

/// A positive integer option of `[slapproxy]` (absent: `default`).
pub(crate) fn positive(config: &Config, key: &str, default: u64) -> anyhow::Result<u64> {
    match config.get_nonempty("slapproxy", key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("[slapproxy] {key} must be a positive whole number, wrong value: '{v}'"),
        },
    }
}

impl Limits {
    /// Reads the options of `[slapproxy]` (absent ones keep their default).
    pub fn from_config(config: &Config) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let size = |key, default: usize| positive(config, key, default as u64).map(|n| n as usize);
        Ok(Limits {
            max_request_size: size("max_request_size", d.max_request_size)?,
            max_field_size: size("max_field_size", d.max_field_size)?,
            max_fields: size("max_fields", d.max_fields)?,
            decode_workers: size("decode_workers", d.decode_workers)?,
            marshal: d.marshal,
            relay_max_response: size("http_proxy_max_response_size", d.relay_max_response)?,
        })
    }
}

impl Connections {
    /// Reads the options of `[slapproxy]` (timeouts in seconds).
    pub fn from_config(config: &Config) -> anyhow::Result<Connections> {
        let d = Connections::default();
        Ok(Connections {
            max_connections: positive(config, "max_connections", d.max_connections as u64)? as usize,
            header_timeout: Duration::from_secs(positive(config, "header_timeout", d.header_timeout.as_secs())?),
            idle_timeout: Duration::from_secs(positive(config, "idle_timeout", d.idle_timeout.as_secs())?),
        })
    }
}

/// At most `max` bytes of `s` for a log line, cut on a character boundary,
/// with how much was left out.
pub fn excerpt(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_and_checked() {
        let c = Config::parse("[slapproxy]\nmax_field_size = 1000\nheader_timeout = 3\n").unwrap();
        let l = Limits::from_config(&c).unwrap();
        assert_eq!((l.max_field_size, l.max_request_size), (1000, 16 << 20));
        assert_eq!(Connections::from_config(&c).unwrap().header_timeout, Duration::from_secs(3));
        let bad = Config::parse("[slapproxy]\nmax_fields = -1\n").unwrap();
        let e = Limits::from_config(&bad).unwrap_err().to_string();
        assert!(e.contains("max_fields") && e.contains("-1"), "{e}");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("abc", 10), "abc");
        assert_eq!(excerpt("ééé", 3), "é… (4 more bytes)");
        assert!(excerpt(&"x".repeat(10 << 20), 200).len() < 250);
    }
}
