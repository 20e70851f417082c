//! The log on stderr: one line per event, as text (`kamisama[PID]: spawned index=3 pid=42`)
//! or as a JSON object, in the [`LogFormat`] the settings pick.

use crate::config::LogFormat;
use crate::event::{Event, ExitStatus, Level, SignalName, Value};
use crate::master::table::Table;
use crate::text::Text;
use nix::errno::Errno;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// The master's log.
///
/// Lines are gathered and written together, once per turn of the master's loop (before it
/// blocks) or when the buffer is full: each write to a pipe wakes whoever reads it (a
/// journal, a terminal), which the fork path cannot afford for every worker it forks. A write
/// is at most `PIPE_BUF` bytes, which a pipe takes whole, so that the master's lines never
/// land inside one another's, nor inside a line a worker writes in one `write`. The buffer
/// lives in a page left out of forks ([`Table`]): the fork path must not allocate (see
/// `Master`), and a line logged after a fork then costs the master no copy of the page (on
/// its stack, it cost a page fault a fork). A line too long for it (a long path, a long
/// reason) is formatted on the heap and written alone. A closed stderr stops nothing.
pub(crate) struct Log {
    master: u32,
    format: LogFormat,
    /// One entry: the lines not written yet.
    pending: Table<Text<{ libc::PIPE_BUF }>>,
}

impl Log {
    pub(crate) fn new(master: u32, format: LogFormat) -> Self {
        Log {
            master,
            format,
            // SAFETY: zero bytes are an empty `Text`.
            pending: unsafe { Table::zeroed(1) },
        }
    }

    pub(crate) fn event(&mut self, event: &Event) {
        self.record(event.level(), event.name(), &|field| event.fields(field));
    }

    /// A line of the master's own that is no event, such as `event-callback-panicked`.
    pub(crate) fn note(&mut self, level: Level, name: &str) {
        self.record(level, name, &|_| {});
    }

    fn record(&mut self, level: Level, name: &str, fields: &Fields<'_>) {
        let writer = Writer {
            format: self.format,
            pid: self.master,
            master: self.master,
        };
        match writer.line(level, name, fields) {
            None => {}
            Some(Line::Short(line)) => {
                if self.pending[0].room() < line.len() {
                    self.flush();
                }
                let _ = self.pending[0].write_str(line.as_str());
            }
            Some(Line::Long(line)) => {
                self.flush();
                write_all(line.as_bytes());
            }
        }
    }

    /// Writes every line gathered.
    pub(crate) fn flush(&mut self) {
        write_all(self.pending[0].as_bytes());
        self.pending[0].clear();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes a worker's `worker-failed` line at once, in the master's log format: its index,
/// its pid and its master's, and the error.
pub(crate) fn worker_failed(format: LogFormat, master: u32, index: usize, error: &dyn fmt::Debug) {
    // The error as `Debug` prints it, which may be long: on the heap, once, as the worker
    // is about to exit.
    let error = format!("{error:?}");
    let worker = std::process::id();
    let fields = |field: &mut dyn FnMut(&'static str, Value<'_>)| {
        field("index", Value::Count(index as u64));
        field("pid", Value::Count(u64::from(worker)));
        // A JSON line names the master in its header already.
        if format == LogFormat::Text {
            field("master", Value::Count(u64::from(master)));
        }
        field("error", Value::Debug(&error));
    };
    let writer = Writer {
        format,
        pid: worker,
        master,
    };
    if let Some(line) = writer.line(Level::Error, "worker-failed", &fields) {
        write_all(line.as_str().as_bytes());
    }
}

/// The fields of a line, handed over one by one.
type Fields<'a> = dyn Fn(&mut dyn FnMut(&'static str, Value<'_>)) + 'a;

/// Who writes a line, and how.
#[derive(Clone, Copy)]
struct Writer {
    format: LogFormat,
    /// The writing process, which a text line names: `kamisama[PID]: `.
    pid: u32,
    /// Its master, which a JSON line names: `"master":PID`.
    master: u32,
}

/// One whole line, newline included: on the stack if it fits, which nearly every line does.
// The stack is the point: the fork path must not allocate.
#[allow(clippy::large_enum_variant)]
enum Line {
    Short(Text<512>),
    Long(String),
}

impl Line {
    fn as_str(&self) -> &str {
        match self {
            Line::Short(line) => line.as_str(),
            Line::Long(line) => line,
        }
    }
}

impl Writer {
    /// The line, or `None` when the log is off.
    fn line(self, level: Level, name: &str, fields: &Fields<'_>) -> Option<Line> {
        let mut short = Text::<512>::default();
        match self.format_into(&mut short, level, name, fields)? {
            Ok(()) => Some(Line::Short(short)),
            Err(fmt::Error) => {
                let mut long = String::new();
                let _ = self.format_into(&mut long, level, name, fields)?;
                Some(Line::Long(long))
            }
        }
    }

    /// Formats one line into `out`, ending with a newline; `None` when the log is off, an error
    /// when `out` has no room for all of it.
    fn format_into(
        self,
        out: &mut dyn Write,
        level: Level,
        name: &str,
        fields: &Fields<'_>,
    ) -> Option<fmt::Result> {
        let mut result;
        match self.format {
            LogFormat::Off => return None,
            LogFormat::Text => {
                result = write!(out, "kamisama[{}]: {name}", self.pid);
                fields(&mut |key, value| {
                    if result.is_ok() {
                        result = write!(out, " {key}={}", Escaped(value));
                    }
                });
            }
            LogFormat::Json => {
                result = write!(
                    out,
                    "{{\"ts\":\"{}\",\"level\":\"{}\",\"event\":\"{name}\",\"master\":{}",
                    Timestamp(SystemTime::now()),
                    level.name(),
                    self.master
                );
                fields(&mut |key, value| {
                    if result.is_ok() {
                        // An exit status is a number; a signal that ended a process has a key
                        // of its own, so that no key has two types.
                        result = match value {
                            Value::Status(ExitStatus::Signal(signal)) => {
                                write!(out, ",\"signal\":\"{}\"", SignalName(signal))
                            }
                            value => write!(out, ",\"{key}\":{}", Json(value)),
                        };
                    }
                });
                if result.is_ok() {
                    result = out.write_char('}');
                }
            }
        }
        if result.is_ok() {
            result = out.write_char('\n');
        }
        Some(result)
    }
}

/// A value in a text line, with the control characters of free text escaped as Rust writes
/// them (`\n`, `\u{1b}`): a multi-line error, or a path with a newline, stays one line, and
/// cannot forge another.
struct Escaped<'a>(Value<'a>);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, quoted) = match self.0 {
            Value::Text(text) => (text, true),
            Value::Word(text) | Value::Debug(text) => (text, false),
            value => return value.fmt(f),
        };
        if quoted {
            f.write_char('"')?;
        }
        for character in text.chars() {
            match character {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '"' if quoted => f.write_str("\\\"")?,
                '\\' if quoted => f.write_str("\\\\")?,
                control if control.is_control() => {
                    write!(f, "\\u{{{:x}}}", u32::from(control))?;
                }
                other => f.write_char(other)?,
            }
        }
        if quoted {
            f.write_char('"')?;
        }
        Ok(())
    }
}

/// A value as JSON: numbers and booleans as such, durations in seconds, the rest as strings.
pub(crate) struct Json<'a>(pub(crate) Value<'a>);

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::Count(count) => write!(f, "{count}"),
            Value::Flag(flag) => write!(f, "{flag}"),
            Value::Span(duration) => {
                let millis = duration.subsec_millis();
                write!(f, "{}.{millis:03}", duration.as_secs())
            }
            Value::Text(text) | Value::Debug(text) | Value::Word(text) => JsonString(text).fmt(f),
            Value::Errno(errno) => {
                let error = std::io::Error::from_raw_os_error(errno).to_string();
                JsonString(&error).fmt(f)
            }
            Value::Indices(indices) => write!(f, "[{}]", Value::Indices(indices)),
            Value::Status(ExitStatus::Code(code)) => write!(f, "{code}"),
            value @ (Value::Signal(_) | Value::Status(_)) => {
                write!(f, "\"{value}\"")
            }
        }
    }
}

/// A string as a JSON string literal, escaped.
pub(crate) struct JsonString<'a>(pub(crate) &'a str);

impl fmt::Display for JsonString<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for character in self.0.chars() {
            match character {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                control if control < ' ' => write!(f, "\\u{:04x}", u32::from(control))?,
                other => f.write_char(other)?,
            }
        }
        f.write_char('"')
    }
}

/// A wall-clock time as RFC 3339 in UTC, to the millisecond: `2026-11-30T01:02:03.456Z`.
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (days, of_day) = (seconds / 86_400, seconds % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            since_epoch.subsec_millis()
        )
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(std::io::stderr(), bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn timestamps_are_rfc_3339_in_utc() {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_796_001_474_985);
        assert_eq!(Timestamp(at).to_string(), "2026-11-30T01:17:54.985Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let leap_day = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(Timestamp(leap_day).to_string(), "2000-02-29T00:00:00.000Z");
    }

    /// Strings a log line may carry: every control character alone, the characters JSON
    /// escapes, text around them, and long strings of all of it (seeded, so that a failure
    /// can be run again).
    fn awkward_strings() -> Vec<String> {
        let mut strings: Vec<String> = (0..0x20u8)
            .chain([0x7f])
            .map(|byte| format!("a{}b", char::from(byte)))
            .collect();
        strings.extend(
            [
                "",
                "\"",
                "\\",
                "\\\"",
                "say \"hi\"\n",
                "\u{2028}\u{2029}",
                "é€😀",
                "\u{85}\u{9b}[31m",
                "\r\nkamisama[1]: shutdown-finished exit=0",
            ]
            .map(str::to_owned),
        );
        let alphabet: Vec<char> = (0..0x20u8)
            .map(char::from)
            .chain([
                '"', '\\', 'a', ' ', '/', 'é', '€', '😀', '\u{7f}', '\u{2028}',
            ])
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for length in [1, 7, 100, 511, 512, 4096, 100_000] {
            let string = (0..length)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            strings.push(string);
        }
        strings
    }

    fn line(format: LogFormat, event: &Event) -> String {
        let writer = Writer {
            format,
            pid: 42,
            master: 42,
        };
        let line = writer.line(event.level(), event.name(), &|field| event.fields(field));
        line.unwrap().as_str().to_owned()
    }

    #[test]
    fn every_json_line_is_one_valid_object_whatever_its_fields_hold() {
        for text in awkward_strings() {
            let events = [
                Event::UpgradeFailed {
                    pid: 7,
                    reason: text.clone(),
                },
                Event::UpgradeStarted {
                    pid: 7,
                    path: text.clone(),
                },
            ];
            for event in events {
                let line = line(LogFormat::Json, &event);
                let (object, end) = line.split_at(line.len() - 1);
                assert_eq!(end, "\n");
                assert!(!object.contains('\n'), "{object:?}");
                let parsed: serde_json::Value = serde_json::from_str(object)
                    .unwrap_or_else(|error| panic!("{error}: {object:?}"));
                let key = if matches!(event, Event::UpgradeFailed { .. }) {
                    "reason"
                } else {
                    "path"
                };
                assert_eq!(parsed[key], text.as_str(), "{object:?}");
                assert_eq!(parsed["master"], 42);
                assert_eq!(parsed["event"], event.name());
            }
        }
    }

    #[test]
    fn every_text_line_is_one_line_whatever_its_fields_hold() {
        for text in awkward_strings() {
            let event = Event::UpgradeFailed {
                pid: 7,
                reason: text.clone(),
            };
            let line = line(LogFormat::Text, &event);
            let (body, end) = line.split_at(line.len() - 1);
            assert_eq!(end, "\n");
            assert!(
                !body.chars().any(char::is_control),
                "a control character in {body:?}"
            );
            assert!(
                body.starts_with("kamisama[42]: upgrade-failed pid=7 reason=\""),
                "{body}"
            );
            // The quotes around the reason are its only unescaped ones.
            let reason = &body["kamisama[42]: upgrade-failed pid=7 reason=".len()..];
            let inner = &reason[1..reason.len() - 1];
            assert!(!inner.replace("\\\\", "").replace("\\\"", "").contains('"'));
        }
    }

    #[test]
    fn a_worker_failed_json_line_names_the_master_once() {
        let writer = Writer {
            format: LogFormat::Json,
            pid: 43,
            master: 42,
        };
        let fields = |field: &mut dyn FnMut(&'static str, Value<'_>)| {
            field("pid", Value::Count(43));
            field("error", Value::Debug("Io(\"gone\")"));
        };
        let line = writer.line(Level::Error, "worker-failed", &fields).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(line.as_str()).unwrap();
        assert_eq!(parsed["master"], 42);
        assert_eq!(parsed["pid"], 43);
        assert_eq!(line.as_str().matches("\"master\":").count(), 1);
    }

    #[test]
    fn lines_too_long_for_the_stack_are_whole_on_the_heap() {
        let long = "x".repeat(600);
        let event = Event::UpgradeStarted { pid: 1, path: long };
        let writer = Writer {
            format: LogFormat::Json,
            pid: 1,
            master: 1,
        };
        let line = writer.line(event.level(), event.name(), &|field| event.fields(field));
        assert!(matches!(line, Some(Line::Long(_))));
        let short = Event::Spawned { index: 1, pid: 2 };
        let line = writer.line(short.level(), short.name(), &|field| short.fields(field));
        assert!(matches!(line, Some(Line::Short(_))));
    }
}
