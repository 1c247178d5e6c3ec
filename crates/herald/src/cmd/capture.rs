//! Captured requests on disk: the one file format `herald listen --dump DIR` writes, `herald
//! sign` prints and `herald verify --request FILE` reads, so "capture, then verify --explain"
//! works with Herald alone.
//!
//! The format is an HTTP/1.1 request as it would travel, with the body byte for byte:
//!
//! ```text
//! POST /notify?a=b HTTP/1.1
//! content-type: application/json
//! webhook-signature: v1,...
//! Content-Length: 17
//!
//! {"order": "1001"}
//! ```
//!
//! The first line is `METHOD [TARGET [VERSION]]` (a bare `POST` is fine); header lines are
//! `Name: value` until an empty line; the body is the next `Content-Length` bytes, or every
//! remaining byte when no `Content-Length` is given. Lines may end in `\n` or `\r\n`.
use anyhow::Context as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A request read back from a capture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub method: String,
    /// The path part of the request target (`/` when none was given).
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    /// Every header but `Content-Length`, in file order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Renders a request in the capture format. `Content-Length` and `Transfer-Encoding` given in
/// `headers` are left out: the written `Content-Length` is the body's true length.
pub fn render(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(format!("{method} {target} HTTP/1.1\n").as_bytes());
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\n\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Numbers the files one process writes, so two requests in the same millisecond never share
/// a name.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes one request into `dir` as a new file named `<unix ms>-<n>.http`; returns its path.
/// Never replaces an existing file.
pub fn save(
    dir: &Path,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> anyhow::Result<PathBuf> {
    let bytes = render(method, target, headers, body);
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n:04}.http", herald_engine::now_ms()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(&bytes)
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
                )
            }
        }
    }
}

/// Splits off one line (without its `\n` or `\r\n`); `None` at the end of the input.
fn next_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.is_empty() {
        return None;
    }
    let (line, rest) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &input[input.len()..]),
    };
    Some((line.strip_suffix(b"\r").unwrap_or(line), rest))
}

/// Parses a capture file (see the module documentation for the format).
pub fn parse(input: &[u8]) -> anyhow::Result<Captured> {
    let (first, mut rest) = next_line(input)
        .context("the request is empty (expected a line such as 'POST /notify')")?;
    let first = std::str::from_utf8(first)
        .ok()
        .context("the request line is not UTF-8")?;
    let mut parts = first.split_whitespace();
    let method = parts
        .next()
        .filter(|m| m.bytes().all(|b| b.is_ascii_uppercase()))
        .with_context(|| format!("the first line {first:?} does not start with an HTTP method"))?
        .to_string();
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    loop {
        let (line, after) =
            next_line(rest).context("the request has no empty line after its headers")?;
        rest = after;
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line)
            .ok()
            .context("a header line is not UTF-8")?;
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("the header line {line:?} has no ':'"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            anyhow::bail!("the header line {line:?} has no name");
        }
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .ok()
                    .with_context(|| format!("Content-Length {value:?} is not a number"))?,
            );
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let body = match content_length {
        Some(n) if n > rest.len() => {
            anyhow::bail!(
                "Content-Length says {n} bytes but the body has {}",
                rest.len()
            )
        }
        Some(n) => rest[..n].to_vec(),
        None => rest.to_vec(),
    };
    Ok(Captured {
        method,
        path: if path.is_empty() { "/" } else { path }.to_string(),
        query: query.to_string(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_request_parses_back_byte_for_byte() {
        let headers = vec![
            ("content-type".to_string(), "text/plain".to_string()),
            ("content-length".to_string(), "999".to_string()),
            ("x-sig".to_string(), "a:b".to_string()),
        ];
        let body = b"line one\r\n\r\nline two\n";
        let text = render("POST", "/notify?x=1", &headers, body);
        let c = parse(&text).unwrap();
        assert_eq!(c.method, "POST");
        assert_eq!(c.path, "/notify");
        assert_eq!(c.query, "x=1");
        assert_eq!(c.headers, vec![headers[0].clone(), headers[2].clone()]);
        assert_eq!(c.body, body);
    }

    #[test]
    fn a_bare_method_line_and_crlf_are_read_and_bad_files_are_refused() {
        let c = parse(b"POST\r\nContent-Type: a/b\r\n\r\n{}\n").unwrap();
        assert_eq!((c.path.as_str(), c.body.as_slice()), ("/", &b"{}\n"[..]));
        assert!(parse(b"").unwrap_err().to_string().contains("empty"));
        assert!(parse(b"{\"a\":1}\n")
            .unwrap_err()
            .to_string()
            .contains("HTTP method"));
        assert!(parse(b"POST\nno colon\n\n")
            .unwrap_err()
            .to_string()
            .contains("':'"));
        assert!(parse(b"POST\nA: b\n")
            .unwrap_err()
            .to_string()
            .contains("empty line"));
        assert!(parse(b"POST\nContent-Length: 10\n\nabc")
            .unwrap_err()
            .to_string()
            .contains("10 bytes"));
    }
}
