//! The log on stderr: one line per event, as text (`kamisama[PID]: spawned index=3 pid=42`)
//! or as a JSON object, in the [`LogFormat`] the settings pick.

use crate::config::LogFormat;
use crate::event::{Event, Level, Value};
use crate::text::Text;
use nix::errno::Errno;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// The master's log.
///
/// Lines are gathered and written together, once per turn of the master's loop (before it
/// blocks) or when the buffer is full: each write to a pipe wakes whoever reads it (a
/// journal, a terminal), which the fork path cannot afford for every worker it forks. A write
/// is at most `PIPE_BUF` bytes, which a pipe takes whole, so lines from the master and its
/// workers never interleave. The buffer lives on the master's stack, as the fork path must
/// not allocate (see `Master`). A closed stderr stops nothing.
pub(crate) struct Log {
    master: u32,
    format: LogFormat,
    pending: Buffer<{ libc::PIPE_BUF }>,
}

impl Log {
    pub(crate) fn new(master: u32, format: LogFormat) -> Self {
        Log {
            master,
            format,
            pending: Buffer::default(),
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
        let mut line = Buffer::<512>::default();
        if format_line(&mut line, self.format, self.master, level, name, fields).is_none() {
            return;
        }
        if self.pending.0.room() < line.0.len() {
            self.flush();
        }
        let _ = self.pending.write_str(line.0.as_str());
    }

    /// Writes every line gathered.
    pub(crate) fn flush(&mut self) {
        write_all(self.pending.0.as_str().as_bytes());
        self.pending.0.clear();
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
        field("master", Value::Count(u64::from(master)));
        field("error", Value::Debug(&error));
    };
    let mut line = String::new();
    if format_line(
        &mut line,
        format,
        worker,
        Level::Error,
        "worker-failed",
        &fields,
    )
    .is_some()
    {
        write_all(line.as_bytes());
    }
}

/// The fields of a line, handed over one by one.
type Fields<'a> = dyn Fn(&mut dyn FnMut(&'static str, Value<'_>)) + 'a;

/// Formats one line into `out`, ending with a newline; `None` when the log is off.
fn format_line(
    out: &mut dyn Write,
    format: LogFormat,
    pid: u32,
    level: Level,
    name: &str,
    fields: &Fields<'_>,
) -> Option<()> {
    let mut result;
    match format {
        LogFormat::Off => return None,
        LogFormat::Text => {
            result = write!(out, "kamisama[{pid}]: {name}");
            fields(&mut |key, value| {
                if result.is_ok() {
                    result = write!(out, " {key}={value}");
                }
            });
        }
        LogFormat::Json => {
            result = write!(
                out,
                "{{\"ts\":\"{}\",\"level\":\"{}\",\"event\":\"{name}\",\"master\":{pid}",
                Timestamp(SystemTime::now()),
                level.name()
            );
            fields(&mut |key, value| {
                if result.is_ok() {
                    result = write!(out, ",\"{key}\":{}", Json(value));
                }
            });
            if result.is_ok() {
                result = out.write_char('}');
            }
        }
    }
    // A line cut short already ends with a newline (see `Buffer`).
    if result.is_ok() {
        let _ = out.write_char('\n');
    }
    Some(())
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
            Value::Text(text) | Value::Debug(text) => JsonString(text).fmt(f),
            Value::Errno(errno) => {
                let error = std::io::Error::from_raw_os_error(errno).to_string();
                JsonString(&error).fmt(f)
            }
            value @ (Value::Signal(_) | Value::Status(_) | Value::Word(_)) => {
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

/// Log lines on the stack. A line cut short still ends with a newline: the last byte is kept
/// for it.
#[derive(Default)]
struct Buffer<const N: usize>(Text<N>);

impl<const N: usize> fmt::Write for Buffer<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.push_within(text, N - 1).inspect_err(|_| {
            let _ = self.0.push_within("\n", N);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn json_strings_are_escaped() {
        let text = JsonString("say \"hi\"\\\n\u{1}").to_string();
        assert_eq!(text, r#""say \"hi\"\\\n\u0001""#);
    }
}
