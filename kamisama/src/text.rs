//! Text on the stack, for the master's code that must not allocate: its log lines, its
//! messages to the service manager, and the process titles it renders before each fork.

use std::fmt;

/// Up to `N` bytes of UTF-8. What does not fit is cut short, between two characters, and the
/// write that was cut reports an error.
#[derive(Clone, Copy)]
pub(crate) struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Text<N> {
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `str`s are copied in, cut at a character boundary.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// The bytes, with no check: for a worker just forked, which runs as little code as it can.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How many bytes more it takes.
    pub(crate) fn room(&self) -> usize {
        N - self.len
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends as much of `text` as fits in the first `limit` bytes (at most `N`).
    pub(crate) fn push_within(&mut self, text: &str, limit: usize) -> fmt::Result {
        let room = limit.min(N).saturating_sub(self.len);
        let mut taken = text.len().min(room);
        while !text.is_char_boundary(taken) {
            taken -= 1;
        }
        self.bytes[self.len..self.len + taken].copy_from_slice(&text.as_bytes()[..taken]);
        self.len += taken;
        if taken < text.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_within(text, N)
    }
}

#[cfg(test)]
mod tests {
    use super::Text;
    use std::fmt::Write;

    #[test]
    fn text_keeps_what_fits_and_cuts_between_characters() {
        let mut text = Text::<8>::default();
        assert!(write!(text, "abc").is_ok());
        assert!(write!(text, "dé").is_ok());
        assert_eq!((text.as_str(), text.len()), ("abcdé", 6));
        // Two bytes left: `é` fits, `f` does not, and the message is cut after `é`.
        assert!(write!(text, "éf").is_err());
        assert_eq!(text.as_str(), "abcdéé");
        // None left: nothing more is taken, not even half of a character.
        assert!(write!(text, "x").is_err());
        let mut text = Text::<3>::default();
        assert!(write!(text, "aé€").is_err());
        assert_eq!(text.as_str(), "aé");
    }

    #[test]
    fn a_limit_keeps_the_bytes_after_it_free() {
        let mut text = Text::<4>::default();
        assert!(text.push_within("abcd", 3).is_err());
        assert_eq!((text.as_str(), text.room()), ("abc", 1));
        assert!(text.push_within("d", 4).is_ok());
        assert_eq!(text.as_str(), "abcd");
    }
}
