//! Consumption journals (`useComputer`'s `use_string`), read into movements.
//!
//! A journal is TioXMLMarshaller XML: `<journal>` of `<transaction>`s (their
//! `start_date`, `stop_date`, `reference`, …) of `<movement>`s (`resource`,
//! `title`, `reference`, `quantity`, `price`, `VAT`, `category`). Three
//! writers send it: our node (`grid::report::usage_journal`: one movement
//! per resource and partition, `reference` the partition id, no start
//! date), slapgrid 1.26.1 (`asXML`, the same shape, the partitions'
//! own movements) and slapos.collect's daily report (`start_date`
//! `<day> 00:00:00`, `reference` the computer id or a partition's user).
//! The journal comes from a node: it is read within bounds (depth, number
//! of movements, length of names) and what cannot be read is skipped.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Movements read from one journal at most (the others are skipped).
pub const MAX_MOVEMENTS: usize = 10_000;
/// Names (resource, title, reference, category) are cut to this many bytes.
pub const MAX_NAME: usize = 200;
/// Elements deeper than this make the journal unreadable.
const MAX_DEPTH: usize = 32;

/// One `<movement>` of a journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalMovement {
    /// The `start_date` of its transaction, when it is a date
    /// (`YYYY-MM-DD[ HH:MM:SS]`, read as UTC), seconds since the epoch.
    pub start: Option<f64>,
    /// `<resource>`.
    pub resource: String,
    /// `<title>` (empty when absent).
    pub title: String,
    /// `<reference>`: a partition id, a partition's user or the computer id.
    pub reference: String,
    /// `<quantity>`.
    pub quantity: f64,
    /// `<category>` (slapos.collect says units go there; usually empty).
    pub category: String,
}

/// What a journal holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Journal {
    /// Its movements, in document order.
    pub movements: Vec<JournalMovement>,
    /// Movements left out: no resource, a quantity that is not a finite
    /// number, or beyond [`MAX_MOVEMENTS`].
    pub skipped: usize,
}

/// Why a journal could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unreadable usage journal: {0}")]
pub struct JournalError(String);

/// A movement being read: its fields' texts.
#[derive(Default)]
struct Fields {
    resource: Option<String>,
    title: Option<String>,
    reference: Option<String>,
    quantity: Option<String>,
    category: Option<String>,
}

impl Fields {
    fn slot(&mut self, name: &[u8]) -> Option<&mut Option<String>> {
        Some(match name {
            b"resource" => &mut self.resource,
            b"title" => &mut self.title,
            b"reference" => &mut self.reference,
            b"quantity" => &mut self.quantity,
            b"category" => &mut self.category,
            _ => return None,
        })
    }

    fn finish(self, start: Option<f64>) -> Option<JournalMovement> {
        let resource = self.resource.filter(|r| !r.trim().is_empty())?;
        let quantity = self.quantity?.trim().parse::<f64>().ok().filter(|q| q.is_finite())?;
        let name = |s: Option<String>| cut(s.unwrap_or_default().trim());
        Some(JournalMovement {
            start,
            resource: cut(resource.trim()),
            title: name(self.title),
            reference: name(self.reference),
            quantity,
            category: name(self.category),
        })
    }
}

/// `s` cut to [`MAX_NAME`] bytes, on a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A `start_date`: `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD`, as UTC; None for
/// anything else (our node's empty one, slapgrid's `… at …` stop dates).
pub fn parse_date(s: &str) -> Option<f64> {
    let s = s.trim();
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN)))
        .ok()?;
    Some(t.and_utc().timestamp() as f64)
}

/// Reads the movements of a journal (every `<movement>`, at any depth, not
/// inside another; the `start_date` of the enclosing transaction).
pub fn parse(xml: &str) -> Result<Journal, JournalError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().check_end_names = true;
    let mut journal = Journal::default();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut start: Option<f64> = None;
    let mut start_text = String::new();
    let mut current: Option<Fields> = None;
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event().map_err(|e| JournalError(format!("at byte {at}: {e}")))?;
        match event {
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                if name == b"movement" && current.is_none() {
                    current = Some(Fields::default());
                } else if name == b"transaction" {
                    start = None;
                }
                stack.push(name);
                if stack.len() > MAX_DEPTH {
                    return Err(JournalError(format!("elements nested deeper than {MAX_DEPTH}")));
                }
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                if name == b"start_date" && stack.last().is_some_and(|p| p == b"transaction") {
                    start = parse_date(&start_text);
                    start_text.clear();
                }
                let closes_movement = name == b"movement" && !stack.iter().any(|n| n == b"movement");
                if let Some(fields) = current.take_if(|_| closes_movement) {
                    match fields.finish(start).filter(|_| journal.movements.len() < MAX_MOVEMENTS) {
                        Some(m) => journal.movements.push(m),
                        None => journal.skipped += 1,
                    }
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| JournalError(format!("at byte {at}: {e}")))?;
                text_of(&stack, &mut current, &mut start_text, &text);
            }
            Event::CData(t) => text_of(&stack, &mut current, &mut start_text, &String::from_utf8_lossy(&t)),
            Event::Eof if stack.is_empty() => break,
            Event::Eof => return Err(JournalError("the document ends inside an element".into())),
            _ => {}
        }
    }
    Ok(journal)
}

/// Text inside the current element: a field of the movement being read
/// (its direct children), or the transaction's start date.
fn text_of(stack: &[Vec<u8>], current: &mut Option<Fields>, start_text: &mut String, text: &str) {
    let (Some(name), Some(parent)) = (stack.last(), stack.len().checked_sub(2).map(|i| &stack[i])) else { return };
    if parent == b"movement" {
        if let Some(slot) = current.as_mut().and_then(|f| f.slot(name)) {
            let s = slot.get_or_insert_with(String::new);
            if s.len() < MAX_NAME * 2 {
                s.push_str(text);
            }
        }
    } else if parent == b"transaction" && name == b"start_date" && start_text.len() < 64 {
        start_text.push_str(text);
    }
}

/// The unit of a resource's quantity: our node's CPU seconds and MiB,
/// slapos.collect's percent, MiB (bytes for the computer's own used
/// memory), else the movement's category when it is short enough to be
/// one, else empty.
pub fn unit_of(resource: &str, computer_level: bool, category: &str) -> String {
    let known = match resource {
        "CPU Consumption" => "s",
        "Memory Consumption" => "MiB",
        "service_module/cpu_load_percent" => "%",
        "service_module/memory_used" if computer_level => "B",
        "service_module/memory_used" | "service_module/disk_used" => "MiB",
        "service_module/zero_emission_ratio" => "",
        _ if category.len() <= 16 && category != "None" => category,
        _ => "",
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_days_or_times_in_utc() {
        assert_eq!(parse_date("2026-11-30 00:00:00"), Some(1_795_996_800.0));
        assert_eq!(parse_date("2026-11-30"), Some(1_795_996_800.0));
        assert_eq!(parse_date("2026-11-30 at 10:00:00"), None);
        assert_eq!(parse_date(""), None);
    }

    #[test]
    fn bad_movements_are_skipped_and_bad_documents_refused() {
        let j = parse(
            "<journal><transaction><movement><resource>cpu</resource><quantity>x</quantity></movement>\
             <movement><quantity>1</quantity></movement><movement><resource>r</resource><quantity>inf</quantity></movement>\
             <movement><resource>ok</resource><quantity> 2.5 </quantity><extra><quantity>9</quantity></extra></movement></transaction></journal>",
        )
        .unwrap();
        assert_eq!(j.skipped, 3);
        assert_eq!(j.movements.len(), 1);
        assert_eq!((j.movements[0].resource.as_str(), j.movements[0].quantity), ("ok", 2.5));
        assert!(parse("<journal><movement>").is_err());
        assert!(parse("<a></b>").is_err());
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).unwrap_err().to_string().contains("deeper"));
    }

    #[test]
    fn names_are_unescaped_and_cut() {
        let long = "é".repeat(300);
        let xml = format!("<j><movement><resource>R&amp;D</resource><title>{long}</title><quantity>1</quantity></movement></j>");
        let m = &parse(&xml).unwrap().movements[0];
        assert_eq!(m.resource, "R&D");
        assert!(m.title.len() <= MAX_NAME && m.title.chars().all(|c| c == 'é'));
    }
}
