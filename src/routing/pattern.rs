//! Route patterns: a route's `bucket` may be a glob (`team-*`) and its `access_point` a template
//! over the bucket name (`arn:aws:s3:us-east-1:123456789012:accesspoint/{bucket}-rw`), so buckets
//! and access points that follow a naming convention take one rule, not one per bucket.
//!
//! `*` matches one or more characters of a bucket name other than `.` (so a matched part can
//! always stand in an access point name); every other character of a pattern is itself. Patterns
//! are pure data: matching allocates nothing and takes no lock.

use crate::s3::AccessPoint;

/// The placeholder an access point template may hold in its name.
pub const BUCKET_PLACEHOLDER: &str = "{bucket}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Lit(u8),
    /// One character other than `.`.
    One,
    /// Zero or more characters other than `.` (a `*` is `One` then `Many`).
    Many,
}

/// A bucket glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPattern {
    text: String,
    tokens: Vec<Token>,
    /// The literal text before the first `*` and after the last one (a quick first test).
    head: String,
    tail: String,
    /// `head*tail` with nothing else: matched without the automaton.
    single_star: bool,
}

impl BucketPattern {
    /// Whether a route's `bucket` is a pattern rather than a name.
    pub fn is_pattern(text: &str) -> bool {
        text.contains('*')
    }

    /// Parses a glob of bucket-name characters (`a-z`, `0-9`, `.`, `-`) and `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !Self::is_pattern(text) {
            return Err("a bucket pattern needs a '*'".to_owned());
        }
        if text.len() > 63 {
            return Err("a bucket pattern is at most 63 characters, as a bucket name".to_owned());
        }
        if text.contains("**") {
            return Err("'**' is not a pattern: one '*' already matches any run of characters".to_owned());
        }
        let mut tokens = Vec::with_capacity(text.len() + 2);
        for b in text.bytes() {
            match b {
                b'*' => tokens.extend([Token::One, Token::Many]),
                b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => tokens.push(Token::Lit(b)),
                _ => {
                    return Err(format!(
                        "{:?} cannot stand in a bucket name (a-z, 0-9, '.', '-'; '*' for any run of them but '.')",
                        char::from(b)
                    ))
                }
            }
        }
        let first = text.find('*').unwrap_or(0);
        let last = text.rfind('*').unwrap_or(0);
        Ok(Self {
            head: text[..first].to_owned(),
            tail: text[last + 1..].to_owned(),
            single_star: first == last,
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How specific the pattern is: its literal characters. Among patterns that match a bucket,
    /// the most specific decides (ties: the first in the file).
    pub fn specificity(&self) -> usize {
        self.text.bytes().filter(|b| *b != b'*').count()
    }

    /// Whether the pattern has a literal `.` (an access point name cannot hold one).
    pub fn has_dot(&self) -> bool {
        self.text.contains('.')
    }

    /// The shortest bucket name the pattern matches (at least 3, as any bucket name).
    pub fn min_len(&self) -> usize {
        self.text.len().max(3)
    }

    pub fn matches(&self, bucket: &str) -> bool {
        let b = bucket.as_bytes();
        if b.len() < self.head.len() + self.tail.len() + 1
            || !bucket.starts_with(&self.head)
            || !bucket.ends_with(&self.tail)
        {
            return false;
        }
        if self.single_star {
            return !b[self.head.len()..b.len() - self.tail.len()].contains(&b'.');
        }
        // The general case: an automaton over the token positions (at most 64 + 64 tokens).
        let n = self.tokens.len();
        let mut now = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        now[0] = true;
        close(&self.tokens, &mut now);
        for &c in b {
            next.iter_mut().for_each(|s| *s = false);
            for i in 0..n {
                if !now[i] {
                    continue;
                }
                match self.tokens[i] {
                    Token::Lit(l) if l == c => next[i + 1] = true,
                    Token::One if c != b'.' => next[i + 1] = true,
                    Token::Many if c != b'.' => next[i] = true,
                    _ => {}
                }
            }
            close(&self.tokens, &mut next);
            std::mem::swap(&mut now, &mut next);
            if !now.iter().any(|s| *s) {
                return false;
            }
        }
        now[n]
    }

    /// Whether some bucket name matches both patterns.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (p, q) = (&self.tokens, &other.tokens);
        let mut memo = vec![None; (p.len() + 1) * (q.len() + 1)];
        overlap(p, q, 0, 0, &mut memo)
    }
}

/// Adds the positions reachable without reading a character (past a `Many`).
fn close(tokens: &[Token], states: &mut [bool]) {
    for i in 0..tokens.len() {
        if states[i] && tokens[i] == Token::Many {
            states[i + 1] = true;
        }
    }
}

fn overlap(p: &[Token], q: &[Token], i: usize, j: usize, memo: &mut [Option<bool>]) -> bool {
    let slot = i * (q.len() + 1) + j;
    if let Some(known) = memo[slot] {
        return known;
    }
    let dotless = |t: Token| t != Token::Lit(b'.');
    let result = match (p.get(i).copied(), q.get(j).copied()) {
        (None, None) => true,
        // A run of non-dots can be empty, or take the other side's next token (a run too).
        (Some(Token::Many), other) => {
            overlap(p, q, i + 1, j, memo) || other.is_some_and(|t| dotless(t) && overlap(p, q, i, j + 1, memo))
        }
        (other, Some(Token::Many)) => {
            overlap(p, q, i, j + 1, memo) || other.is_some_and(|t| dotless(t) && overlap(p, q, i + 1, j, memo))
        }
        (Some(Token::One), Some(t)) | (Some(t), Some(Token::One)) => dotless(t) && overlap(p, q, i + 1, j + 1, memo),
        (Some(Token::Lit(a)), Some(Token::Lit(b))) => a == b && overlap(p, q, i + 1, j + 1, memo),
        _ => false,
    };
    memo[slot] = Some(result);
    result
}

/// An access point ARN whose name holds `{bucket}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPointTemplate {
    text: String,
    /// The ARN up to the name (`arn:aws:s3:REGION:ACCOUNT:accesspoint/`).
    arn_head: String,
    /// The name, split at its placeholders: `parts[0] {bucket} parts[1] ...`.
    parts: Vec<String>,
}

impl AccessPointTemplate {
    /// Whether a route's `access_point` is a template.
    pub fn is_template(text: &str) -> bool {
        text.contains('{') || text.contains('}')
    }

    /// Parses a template and checks that every name it can make from a bucket name without `.` is
    /// a valid access point name, but for its length (checked per bucket: see [`Self::expand`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let split = text
            .rfind("accesspoint/")
            .or_else(|| text.rfind("accesspoint:"))
            .ok_or("resource must be accesspoint/NAME")?;
        let (arn_head, name) = text.split_at(split + "accesspoint/".len());
        if arn_head.contains(['{', '}']) {
            return Err(format!(
                "only the access point name may hold {BUCKET_PLACEHOLDER} (not the partition, region or account)"
            ));
        }
        let parts: Vec<String> = name.split(BUCKET_PLACEHOLDER).map(str::to_owned).collect();
        if parts.iter().any(|p| p.contains(['{', '}'])) {
            return Err(format!("{BUCKET_PLACEHOLDER} is the only placeholder"));
        }
        if parts.len() < 2 {
            return Err(format!("a template names the bucket as {BUCKET_PLACEHOLDER}"));
        }
        if let Some(bad) = parts
            .iter()
            .flat_map(|p| p.bytes())
            .find(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'))
        {
            return Err(format!(
                "{:?} cannot stand in an access point name (a-z, 0-9, '-')",
                char::from(bad)
            ));
        }
        if parts[0].starts_with('-') || parts[parts.len() - 1].ends_with('-') {
            return Err("an access point name starts and ends with a letter or digit".to_owned());
        }
        let template = Self {
            text: text.to_owned(),
            arn_head: arn_head.to_owned(),
            parts,
        };
        // The rest of the ARN (partition, region, account) as any access point's; the name's
        // length depends on the bucket (checked with the route's bucket or pattern).
        AccessPoint::parse(&format!("{}abc", template.arn_head)).map_err(|e| e.to_string())?;
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The name part with its placeholder, `{bucket}-rw` (what metrics label the access point by).
    pub fn name_template(&self) -> String {
        self.parts.join(BUCKET_PLACEHOLDER)
    }

    fn fill(&self, bucket: &str) -> String {
        let mut arn = String::with_capacity(self.arn_head.len() + self.text.len() + bucket.len() * 2);
        arn.push_str(&self.arn_head);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                arn.push_str(bucket);
            }
            arn.push_str(part);
        }
        arn
    }

    /// The length of the name made from a bucket name of `bucket_len` characters.
    pub fn name_len(&self, bucket_len: usize) -> usize {
        self.parts.iter().map(String::len).sum::<usize>() + (self.parts.len() - 1) * bucket_len
    }

    /// The access point of a bucket, or `None` when the name would not be a valid one (longer than
    /// 50 characters, or the bucket name holds a `.`).
    pub fn expand(&self, bucket: &str) -> Option<AccessPoint> {
        if bucket.contains('.') {
            return None;
        }
        AccessPoint::parse(&self.fill(bucket)).ok()
    }
}

#[cfg(test)]
mod tests;
