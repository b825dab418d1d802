//! The instance parameter XML (`<instance><parameter id="…">…</parameter></instance>`).
