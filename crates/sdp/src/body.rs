//! Lossless SDP line model (RFC 4566 §5): every byte of the body is kept, including line
//! endings (CRLF or LF, per line, as received), unknown or malformed lines and their order.
//!
//! An [`Sdp`] is a session part (every line before the first `m=` line) followed by media
//! sections (each starts with its `m=` line). Serialising an unedited [`Sdp`] gives back the
//! input byte for byte; edits touch only the lines they name, so an ALG can rewrite a few
//! lines and pass everything else through unchanged.

use crate::Error;
use std::fmt;

/// How a line was terminated in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `\r\n` (RFC 4566 §5).
    CrLf,
    /// A bare `\n` (accepted by RFC 4566 §5 parsers and seen in the wild).
    Lf,
    /// The last line of a body that does not end with a line break.
    None,
}

impl Ending {
    /// The terminator bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrLf => "\r\n",
            Self::Lf => "\n",
            Self::None => "",
        }
    }
}

/// One line of the body: its text (without terminator) and its terminator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    text: String,
    ending: Ending,
}

impl Line {
    /// The text without its terminator.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The terminator as received.
    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// The type letter of a `<type>=<value>` line (RFC 4566 §5), if the line has that form.
    pub fn kind(&self) -> Option<char> {
        let mut chars = self.text.chars();
        let kind = chars.next()?;
        (chars.next() == Some('=')).then_some(kind)
    }

    /// The value of a `<type>=<value>` line.
    pub fn value(&self) -> Option<&str> {
        self.kind()?;
        self.text.get(2..)
    }

    /// Typed view of an `a=` line.
    pub fn attribute(&self) -> Option<Attribute<'_>> {
        if self.kind()? != 'a' {
            return None;
        }
        let value = self.value()?;
        Some(match value.split_once(':') {
            Some((name, v)) => Attribute { name, value: Some(v) },
            None => Attribute { name: value, value: None },
        })
    }

    /// Typed view of an `m=` line (`None` for other lines).
    pub fn media(&self) -> Option<Result<MediaLine<'_>, Error>> {
        (self.kind()? == 'm').then(|| MediaLine::parse(self.value().unwrap_or_default()))
    }

    /// Typed view of a `c=` line (`None` for other lines).
    pub fn connection(&self) -> Option<Result<Connection<'_>, Error>> {
        (self.kind()? == 'c').then(|| Connection::parse(self.value().unwrap_or_default()))
    }
}

/// An `a=<name>[:<value>]` line (RFC 4566 §5.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute name (e.g. `crypto`, `key-mgmt`, `3ge2ae`).
    pub name: &'a str,
    /// Everything after the first `:`; `None` for a property attribute.
    pub value: Option<&'a str>,
}

/// Splits `s` at runs of spaces, yielding `(offset, token)`.
fn tokens(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split(' ')
        .scan(0usize, |pos, tok| {
            let start = *pos;
            *pos = start + tok.len() + 1;
            Some((start, tok))
        })
        .filter(|(_, t)| !t.is_empty())
}

/// An `m=<media> <port>[/<number>] <proto> <fmt> ...` line (RFC 4566 §5.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaLine<'a> {
    /// Media type (`audio`, `video`, ...).
    pub media: &'a str,
    /// Transport port (0 = stream rejected/disabled).
    pub port: u16,
    /// Number of ports when given as `<port>/<number>`.
    pub port_count: Option<u16>,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, ...).
    pub proto: &'a str,
    /// Media formats.
    pub formats: Vec<&'a str>,
}

impl<'a> MediaLine<'a> {
    /// Parses the value of an `m=` line; offsets in errors count from the value's start.
    pub fn parse(value: &'a str) -> Result<Self, Error> {
        let mut it = tokens(value);
        let (_, media) = it.next().ok_or(Error::Syntax { offset: 0, what: "media type" })?;
        let (port_off, port_tok) =
            it.next().ok_or(Error::Syntax { offset: value.len(), what: "port" })?;
        let (port, port_count) = match port_tok.split_once('/') {
            Some((p, n)) => (p, Some(n)),
            None => (port_tok, None),
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| Error::Range { offset: port_off, what: "port must be 0..65535" })?;
        let port_count = port_count
            .map(|n| n.parse::<u16>())
            .transpose()
            .map_err(|_| Error::Range { offset: port_off, what: "number of ports" })?;
        let (_, proto) = it.next().ok_or(Error::Syntax { offset: value.len(), what: "proto" })?;
        Ok(Self { media, port, port_count, proto, formats: it.map(|(_, t)| t).collect() })
    }
}

/// A `c=<nettype> <addrtype> <connection-address>` line (RFC 4566 §5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection<'a> {
    /// Network type (`IN`).
    pub net_type: &'a str,
    /// Address type (`IP4`, `IP6`).
    pub addr_type: &'a str,
    /// Connection address, including any `/ttl` or `/number` suffix.
    pub address: &'a str,
}

impl<'a> Connection<'a> {
    /// Parses the value of a `c=` line.
    pub fn parse(value: &'a str) -> Result<Self, Error> {
        let mut it = tokens(value);
        let mut next = |what| it.next().map(|(_, t)| t).ok_or(Error::Syntax { offset: value.len(), what });
        let net_type = next("network type")?;
        let addr_type = next("address type")?;
        let address = next("connection address")?;
        if let Some((offset, _)) = it.next() {
            return Err(Error::Syntax { offset, what: "end of c= line" });
        }
        Ok(Self { net_type, addr_type, address })
    }
}

/// Which part of the body an edit or a query addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The session part (before the first `m=` line).
    Session,
    /// The media section with this index (0-based, in body order).
    Media(usize),
}

/// A whole SDP body, kept line by line. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sdp {
    session: Vec<Line>,
    media: Vec<Vec<Line>>,
}

impl Sdp {
    /// Splits any text into lines; never fails and never loses a byte.
    pub fn parse(text: &str) -> Self {
        let mut sdp = Self::default();
        for chunk in text.split_inclusive('\n') {
            let (body, ending) = if let Some(b) = chunk.strip_suffix("\r\n") {
                (b, Ending::CrLf)
            } else if let Some(b) = chunk.strip_suffix('\n') {
                (b, Ending::Lf)
            } else {
                (chunk, Ending::None)
            };
            let line = Line { text: body.to_owned(), ending };
            if line.kind() == Some('m') {
                sdp.media.push(vec![line]);
            } else if let Some(section) = sdp.media.last_mut() {
                section.push(line);
            } else {
                sdp.session.push(line);
            }
        }
        sdp
    }

    /// Like [`Sdp::parse`] for raw bytes; fails only if they are not UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, Error> {
        std::str::from_utf8(bytes)
            .map(Self::parse)
            .map_err(|e| Error::Utf8 { offset: e.valid_up_to() })
    }

    /// Number of media sections.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// Every level in body order: the session part, then each media section.
    pub fn levels(&self) -> impl Iterator<Item = Level> + use<> {
        std::iter::once(Level::Session).chain((0..self.media.len()).map(Level::Media))
    }

    /// The lines of one level (for a media section, the `m=` line is line 0).
    pub fn lines(&self, level: Level) -> Result<&[Line], Error> {
        match level {
            Level::Session => Ok(&self.session),
            Level::Media(i) => self.media.get(i).map(Vec::as_slice).ok_or(Error::NoSuchMedia(i)),
        }
    }

    fn lines_mut(&mut self, level: Level) -> Result<&mut Vec<Line>, Error> {
        match level {
            Level::Session => Ok(&mut self.session),
            Level::Media(i) => self.media.get_mut(i).ok_or(Error::NoSuchMedia(i)),
        }
    }

    /// The `m=` line of media section `i`, parsed.
    pub fn media_line(&self, i: usize) -> Result<MediaLine<'_>, Error> {
        let line = self.media.get(i).and_then(|s| s.first()).ok_or(Error::NoSuchMedia(i))?;
        line.media().unwrap_or(Err(Error::NoSuchMedia(i)))
    }

    /// The attributes of one level with their line index, in order.
    pub fn attributes(&self, level: Level) -> Result<Vec<(usize, Attribute<'_>)>, Error> {
        Ok(self.lines(level)?.iter().enumerate().filter_map(|(i, l)| Some((i, l.attribute()?))).collect())
    }

    /// The values of every attribute named `name` at one level, in order.
    pub fn attribute_values(&self, level: Level, name: &str) -> Result<Vec<&str>, Error> {
        Ok(self
            .attributes(level)?
            .into_iter()
            .filter(|(_, a)| a.name == name)
            .map(|(_, a)| a.value.unwrap_or_default())
            .collect())
    }

    /// Removes every attribute at `level` for which `remove` returns true; returns how many.
    pub fn remove_attributes(
        &mut self,
        level: Level,
        mut remove: impl FnMut(&Attribute<'_>) -> bool,
    ) -> Result<usize, Error> {
        let lines = self.lines_mut(level)?;
        let before = lines.len();
        // Kept lines keep their own terminators, even when the unterminated final line goes.
        lines.retain(|l| !l.attribute().is_some_and(|a| remove(&a)));
        Ok(before - lines.len())
    }

    /// The terminator used by most of the body (first terminated line; CRLF if none).
    pub fn dominant_ending(&self) -> Ending {
        self.session
            .iter()
            .chain(self.media.iter().flatten())
            .map(|l| l.ending)
            .find(|e| *e != Ending::None)
            .unwrap_or(Ending::CrLf)
    }

    /// Appends `a=<attribute>` to `level` right after the level's last `a=` line (or at the
    /// end of the level when it has none). `attribute` is `name[:value]` without `a=`.
    pub fn insert_attribute(&mut self, level: Level, attribute: &str) -> Result<usize, Error> {
        let lines = self.lines(level)?;
        let index = lines.iter().rposition(|l| l.kind() == Some('a')).map_or(lines.len(), |i| i + 1);
        self.insert_line(level, index, &format!("a={attribute}"))?;
        Ok(index)
    }

    /// Replaces the `a=` line at `index` of `level` by `a=<attribute>` (`name[:value]`),
    /// keeping its position and terminator.
    pub fn replace_attribute(&mut self, level: Level, index: usize, attribute: &str) -> Result<(), Error> {
        let line = self.lines(level)?.get(index).ok_or(Error::Edit("line index out of range"))?;
        if line.kind() != Some('a') {
            return Err(Error::Edit("the line to replace is not an a= line"));
        }
        self.replace_line(level, index, &format!("a={attribute}"))
    }

    /// Inserts a line (text without terminator) at `index` of `level`. The new line gets the
    /// body's dominant terminator; inserted after an unterminated final line, that line gets
    /// the terminator instead and the new line becomes the unterminated final line.
    pub fn insert_line(&mut self, level: Level, index: usize, text: &str) -> Result<(), Error> {
        check_line_text(text, level, usize::MAX)?;
        if matches!(level, Level::Media(_)) && index == 0 {
            return Err(Error::Edit("nothing can be inserted before a media section's m= line"));
        }
        let ending = self.dominant_ending();
        let lines = self.lines_mut(level)?;
        if index > lines.len() {
            return Err(Error::Edit("line index out of range"));
        }
        let mut new = Line { text: text.to_owned(), ending };
        if let Some(prev) = index.checked_sub(1).and_then(|p| lines.get_mut(p))
            && prev.ending == Ending::None
        {
            prev.ending = ending;
            new.ending = Ending::None;
        }
        lines.insert(index, new);
        Ok(())
    }

    /// Replaces the text of line `index` of `level`, keeping its terminator.
    pub fn replace_line(&mut self, level: Level, index: usize, text: &str) -> Result<(), Error> {
        check_line_text(text, level, index)?;
        let line = self.lines_mut(level)?.get_mut(index).ok_or(Error::Edit("line index out of range"))?;
        text.clone_into(&mut line.text);
        Ok(())
    }

    /// Removes line `index` of `level` (not the `m=` line of a media section).
    pub fn remove_line(&mut self, level: Level, index: usize) -> Result<(), Error> {
        if matches!(level, Level::Media(_)) && index == 0 {
            return Err(Error::Edit("the m= line cannot be removed"));
        }
        let lines = self.lines_mut(level)?;
        if index >= lines.len() {
            return Err(Error::Edit("line index out of range"));
        }
        lines.remove(index);
        Ok(())
    }

    /// Rewrites the port and/or the proto field of media section `i`'s `m=` line, keeping
    /// every other byte of the line (e.g. `RTP/SAVP` -> `RTP/AVP` in an e2ae ALG).
    pub fn set_media_port_proto(&mut self, i: usize, port: Option<u16>, proto: Option<&str>) -> Result<(), Error> {
        let line = self.media.get(i).and_then(|s| s.first()).ok_or(Error::NoSuchMedia(i))?;
        let value = line.value().unwrap_or_default();
        MediaLine::parse(value)?;
        let toks: Vec<(usize, &str)> = tokens(value).collect();
        let mut out = String::from("m=");
        let mut pos = 0;
        for (n, (off, tok)) in toks.iter().enumerate() {
            out.push_str(value.get(pos..*off).unwrap_or_default());
            let replaced = match n {
                1 => port.map(|p| match tok.split_once('/') {
                    Some((_, count)) => format!("{p}/{count}"),
                    None => p.to_string(),
                }),
                2 => proto.map(str::to_owned),
                _ => None,
            };
            out.push_str(replaced.as_deref().unwrap_or(tok));
            pos = off + tok.len();
        }
        out.push_str(value.get(pos..).unwrap_or_default());
        if out.contains(['\r', '\n']) || proto.is_some_and(|p| p.is_empty() || p.contains(' ')) {
            return Err(Error::Edit("proto must be one non-empty token"));
        }
        self.replace_line(Level::Media(i), 0, &out)
    }
}

fn check_line_text(text: &str, level: Level, index: usize) -> Result<(), Error> {
    if text.contains(['\r', '\n']) {
        return Err(Error::Edit("line text contains a line break"));
    }
    let is_m = text.starts_with("m=");
    match (level, index) {
        (Level::Media(_), 0) if !is_m => Err(Error::Edit("line 0 of a media section must be its m= line")),
        (Level::Media(_), 0) => Ok(()),
        _ if is_m => Err(Error::Edit("an m= line can only replace a media section's m= line")),
        _ => Ok(()),
    }
}

impl fmt::Display for Sdp {
    /// The body, byte for byte as parsed (plus edits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.session.iter().chain(self.media.iter().flatten()) {
            f.write_str(&line.text)?;
            f.write_str(line.ending.as_str())?;
        }
        Ok(())
    }
}
