//! The little HTTP/1.1 that `bench` and `emulate` speak, on tokio: requests
//! with a `Content-Length` body, responses with a length or chunked
//! (streams), keep-alive, and Server-Sent Events split out of a streamed
//! body as they arrive. Plain `http://` only: load generators run next to
//! the endpoint, and TLS would add a dependency tree for no measurement.
//!
//! Every read is bounded (header size, body size) so a broken peer gives an
//! error, not unbounded memory.

use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest header block read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body read whole (a request with a 1M-token id prompt is ~8 MB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not HTTP/1.1 as we read it.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// The connection closed before a complete message.
    #[error("connection closed {0}")]
    Closed(&'static str),
    /// A URL kvprobe cannot use.
    #[error("{0}")]
    Url(String),
}

/// A parsed `http://host:port/prefix` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path prefix without a trailing slash (often empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses a base URL; `https://` and anything without a host are refused with the reason.
    pub fn parse(s: &str) -> Result<BaseUrl, HttpError> {
        let rest = match s.split_once("://") {
            Some(("http", r)) => r,
            Some((scheme, _)) => {
                return Err(HttpError::Url(format!(
                    "{s}: only http:// is supported (got {scheme}://); run the load generator where it can reach the endpoint over plain HTTP"
                )));
            }
            None => s,
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| HttpError::Url(format!("{s}: bad port {p:?}")))?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            _ => (hostport.to_string(), 80),
        };
        if host.is_empty() {
            return Err(HttpError::Url(format!("{s}: no host in the URL (example: http://127.0.0.1:8000)")));
        }
        let mut prefix = path.trim_end_matches('/').to_string();
        // accept a URL that already names the API root
        for tail in ["/v1/completions", "/v1"] {
            if prefix.ends_with(tail) {
                prefix.truncate(prefix.len() - tail.len());
            }
        }
        Ok(BaseUrl { host, port, prefix })
    }

    /// `host:port` for connecting and the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{}", self.authority(), self.prefix, path)
    }
}

/// A request as the server reads it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, query string removed.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Reads one line (up to and including `\n`) of at most `limit` bytes;
/// `Ok(None)` at the end of the stream before any byte.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<String>, HttpError> {
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() { Ok(None) } else { Err(HttpError::Closed("inside a line")) };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit {
            return Err(HttpError::Malformed(format!("a line longer than {limit} bytes")));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Reads the start line and headers; `None` on a clean end before any byte.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<(String, Vec<(String, String)>)>, HttpError> {
    let mut start;
    let mut total = 0usize;
    loop {
        start = match read_line_bounded(r, MAX_HEAD - total).await? {
            Some(l) => l,
            None if total == 0 => return Ok(None),
            None => return Err(HttpError::Closed("inside the header")),
        };
        let n = start.len();
        total += n;
        if !start.trim().is_empty() {
            break; // tolerate blank lines before a message (RFC 9112 2.2)
        }
        if total > MAX_HEAD {
            return Err(HttpError::Malformed("header too large".into()));
        }
    }
    let mut headers = Vec::new();
    loop {
        if total >= MAX_HEAD {
            return Err(HttpError::Malformed(format!("header larger than {MAX_HEAD} bytes")));
        }
        let line = read_line_bounded(r, MAX_HEAD - total).await?.ok_or(HttpError::Closed("inside the header"))?;
        total += line.len();
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| HttpError::Malformed(format!("header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Some((start.trim_end().to_string(), headers)))
}

/// Reads one request (server side); `None` when the client closed the
/// connection cleanly. Answers `Expect: 100-continue` before reading the body.
pub async fn read_request<R: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut R,
) -> Result<Option<Request>, HttpError> {
    let Some((start, headers)) = read_head(r).await? else { return Ok(None) };
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HttpError::Malformed(format!("request line {start:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("unsupported version {version:?}")));
    }
    if header(&headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Err(HttpError::Malformed("chunked request bodies are not supported; send Content-Length".into()));
    }
    let len = match header(&headers, "content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| HttpError::Malformed(format!("content-length {v:?}")))?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err(HttpError::Malformed(format!("body of {len} bytes is larger than {MAX_BODY}")));
    }
    if len > 0 && header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        r.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        r.flush().await?;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|_| HttpError::Closed("inside the request body"))?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Some(Request { method: method.to_string(), path, headers, body }))
}

/// The reason phrase of the status codes we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response with a length.
pub async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Starts a chunked response (a stream); send pieces with [`write_chunk`]
/// and end it with [`end_chunks`].
pub async fn start_chunked<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    content_type: &str,
    extra_headers: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n{extra_headers}\r\n"
    );
    w.write_all(head.as_bytes()).await?;
    w.flush().await
}

/// One chunk of a chunked body, flushed at once (each SSE event leaves when it is made).
pub async fn write_chunk<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out).await?;
    w.flush().await
}

/// The last chunk.
pub async fn end_chunks<W: tokio::io::AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    UntilClose,
}

/// What has arrived of the next `left` bytes (at least one), counting them off.
async fn take_up_to<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    left: &mut u64,
    cut: &'static str,
) -> Result<Vec<u8>, HttpError> {
    let buf = r.fill_buf().await?;
    if buf.is_empty() {
        return Err(HttpError::Closed(cut));
    }
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    let piece = buf[..n].to_vec();
    r.consume(n);
    *left -= n as u64;
    Ok(piece)
}

/// A response being read (client side): status, headers, then the body
/// piece by piece as bytes arrive.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    framing: Framing,
    finished: bool,
    keep_alive: bool,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the whole body was read and the connection may carry another request.
    pub fn reusable(&self) -> bool {
        self.finished && self.keep_alive
    }

    /// The next piece of the body as it arrives; `None` at its end. A body
    /// cut short (closed inside a chunk or before its length) is an error.
    pub async fn next_piece<R: tokio::io::AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        if self.finished {
            return Ok(None);
        }
        match &mut self.framing {
            Framing::Length(left) => {
                if *left == 0 {
                    self.finished = true;
                    return Ok(None);
                }
                take_up_to(r, left, "before the end of the body").await.map(Some)
            }
            Framing::Chunked { left, done } => {
                while *left == 0 {
                    if *done {
                        // the chunk's closing CRLF was read already; read trailers to the blank line
                        loop {
                            let line = read_line_bounded(r, MAX_HEAD)
                                .await?
                                .ok_or(HttpError::Closed("inside the chunked trailer"))?;
                            if line.trim().is_empty() {
                                break;
                            }
                        }
                        self.finished = true;
                        return Ok(None);
                    }
                    let line = read_line_bounded(r, 1024)
                        .await?
                        .ok_or(HttpError::Closed("inside a chunked body (the stream was cut)"))?;
                    let size = line.trim().split(';').next().unwrap_or("").trim();
                    if size.is_empty() {
                        continue; // the CRLF ending the previous chunk
                    }
                    let n = u64::from_str_radix(size, 16)
                        .map_err(|_| HttpError::Malformed(format!("chunk size line {:?}", line.trim())))?;
                    if n == 0 {
                        *done = true;
                    } else {
                        *left = n;
                    }
                }
                take_up_to(r, left, "inside a chunk (the stream was cut)").await.map(Some)
            }
            Framing::UntilClose => {
                let buf = r.fill_buf().await?;
                if buf.is_empty() {
                    self.finished = true;
                    return Ok(None);
                }
                let piece = buf.to_vec();
                r.consume(piece.len());
                Ok(Some(piece))
            }
        }
    }

    /// Reads the rest of the body, at most `limit` bytes (more is an error).
    pub async fn read_all<R: tokio::io::AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
        limit: usize,
    ) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(p) = self.next_piece(r).await? {
            out.extend_from_slice(&p);
            if out.len() > limit {
                return Err(HttpError::Malformed(format!("response body larger than {limit} bytes")));
            }
        }
        Ok(out)
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// The buffered socket.
    pub io: BufReader<TcpStream>,
    /// Requests this connection carried before.
    pub used: u64,
}

impl Conn {
    /// Connects to `base`.
    pub async fn open(base: &BaseUrl) -> Result<Conn, HttpError> {
        let s = TcpStream::connect(base.authority()).await?;
        s.set_nodelay(true)?;
        Ok(Conn { io: BufReader::new(s), used: 0 })
    }

    /// Sends a request and reads the response's status and headers; the
    /// body is read with [`Response::next_piece`] on `self.io`.
    pub async fn send(
        &mut self,
        base: &BaseUrl,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nhost: {}\r\nuser-agent: kvprobe/{}\r\naccept: */*\r\n",
            base.prefix,
            base.authority(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(b) = body {
            head.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        self.used += 1;
        self.io.get_mut().write_all(&out).await?;
        let (start, headers) =
            read_head(&mut self.io).await?.ok_or(HttpError::Closed("before the response (no status line)"))?;
        let mut parts = start.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(HttpError::Malformed(format!("status line {start:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed(format!("status line {start:?}")));
        }
        let status = code.parse::<u16>().map_err(|_| HttpError::Malformed(format!("status line {start:?}")))?;
        let te_chunked =
            header(&headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let framing = if te_chunked {
            Framing::Chunked { left: 0, done: false }
        } else if let Some(l) = header(&headers, "content-length") {
            Framing::Length(l.parse().map_err(|_| HttpError::Malformed(format!("content-length {l:?}")))?)
        } else if method == "HEAD" || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            Framing::UntilClose
        };
        let close = header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || version == "HTTP/1.0"
            || framing == Framing::UntilClose;
        Ok(Response { status, headers, framing, finished: false, keep_alive: !close })
    }
}

/// Splits Server-Sent Events out of a byte stream: feed pieces as they
/// arrive, take whole events' `data` fields.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for an event's end.
    scanned: usize,
}

/// Largest event the parser holds before giving up on the stream.
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

impl SseParser {
    /// Adds bytes; returns the data of every event completed by them (the
    /// `data:` lines of one event joined with newlines; comments and other
    /// fields are dropped). An event larger than [`MAX_EVENT`] is an error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            // an event ends with a blank line: "\n\n" or "\r\n\r\n"; resume where the
            // last search stopped (less the 2 bytes a split terminator may straddle)
            let from = self.scanned.saturating_sub(2);
            let Some((at, len)) = find_blank_line(&self.buf[from..]).map(|(a, l)| (a + from, l)) else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_EVENT {
                    return Err(format!("a stream event larger than {MAX_EVENT} bytes"));
                }
                break;
            };
            self.scanned = 0;
            let event: Vec<u8> = self.buf.drain(..at + len).take(at).collect();
            let text = String::from_utf8_lossy(&event);
            let mut data: Vec<&str> = Vec::new();
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        Ok(out)
    }

    /// Bytes held that do not yet form an event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\n' {
            if b[i + 1] == b'\n' {
                return Some((i, 2));
            }
            if b[i + 1] == b'\r' && b.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

/// A GET with the whole body read (at most 1 MiB), for `/v1/models` and friends.
pub async fn get(
    base: &BaseUrl,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), HttpError> {
    let work = async {
        let mut c = Conn::open(base).await?;
        let mut r = c.send(base, "GET", path, None).await?;
        let body = r.read_all(&mut c.io, 1 << 20).await?;
        Ok::<_, HttpError>((r.status, r.headers, body))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {:.0} s", timeout.as_secs_f64()),
        ))),
    }
}

/// Seconds between two instants.
pub fn secs(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.prefix.as_str()), ("127.0.0.1", 8000, ""));
        let u = BaseUrl::parse("http://10.0.0.2:9000/v1/").unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (9000, ""));
        let u = BaseUrl::parse("localhost").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 80));
        let u = BaseUrl::parse("http://[::1]:8000/serve").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.prefix.as_str()), ("::1", 8000, "/serve"));
        assert_eq!(u.url("/v1/models"), "http://[::1]:8000/serve/v1/models");
        assert!(BaseUrl::parse("https://x:1").unwrap_err().to_string().contains("only http://"));
        assert!(BaseUrl::parse("http://x:abc").is_err());
        assert!(BaseUrl::parse("http://:80").is_err());
    }

    #[test]
    fn sse_events_split_across_pieces() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(p.feed(b":1}\n\ndata: [DONE]\r\n\r\n: comment\n\n").unwrap(), vec!["{\"a\":1}", "[DONE]"]);
        assert_eq!(p.pending(), 0);
        assert_eq!(p.feed(b"event: x\ndata: a\ndata: b\n\n").unwrap(), vec!["a\nb"]);
        // a terminator split across pieces, byte by byte
        let mut q = SseParser::default();
        let mut got = Vec::new();
        for b in b"data: x\r\n\r\ndata: y\n\n" {
            got.extend(q.feed(&[*b]).unwrap());
        }
        assert_eq!(got, vec!["x", "y"]);
        // an endless event is refused
        let mut big = SseParser::default();
        assert!(big.feed(&vec![b'a'; MAX_EVENT + 1]).is_err());
    }

    #[test]
    fn chunked_and_length_bodies_round_trip() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut io = BufReader::new(s);
                let req = read_request(&mut io).await.unwrap().unwrap();
                assert_eq!((req.method.as_str(), req.path.as_str(), req.body.as_slice()), ("POST", "/x", &b"hi"[..]));
                start_chunked(io.get_mut(), "text/event-stream", "").await.unwrap();
                write_chunk(io.get_mut(), b"data: 1\n\n").await.unwrap();
                write_chunk(io.get_mut(), b"data: 2\n\n").await.unwrap();
                end_chunks(io.get_mut()).await.unwrap();
                let req = read_request(&mut io).await.unwrap().unwrap();
                assert_eq!(req.method, "GET");
                write_response(io.get_mut(), 404, "application/json", "", b"{}").await.unwrap();
                assert!(read_request(&mut io).await.unwrap().is_none());
            });
            let base = BaseUrl::parse(&format!("http://{addr}")).unwrap();
            let mut c = Conn::open(&base).await.unwrap();
            let mut r = c.send(&base, "POST", "/x", Some(b"hi")).await.unwrap();
            let mut sse = SseParser::default();
            let mut events = Vec::new();
            while let Some(p) = r.next_piece(&mut c.io).await.unwrap() {
                events.extend(sse.feed(&p).unwrap());
            }
            assert_eq!(events, vec!["1", "2"]);
            assert!(r.reusable());
            let mut r = c.send(&base, "GET", "/y", None).await.unwrap();
            assert_eq!(r.status, 404);
            assert_eq!(r.read_all(&mut c.io, 100).await.unwrap(), b"{}");
            drop(c);
            server.await.unwrap();
        });
    }

    #[test]
    fn a_cut_chunked_stream_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut io = BufReader::new(s);
                read_request(&mut io).await.unwrap().unwrap();
                start_chunked(io.get_mut(), "text/event-stream", "").await.unwrap();
                write_chunk(io.get_mut(), b"data: 1\n\n").await.unwrap();
                // dropped without the last chunk
            });
            let base = BaseUrl::parse(&format!("http://{addr}")).unwrap();
            let mut c = Conn::open(&base).await.unwrap();
            let mut r = c.send(&base, "POST", "/x", Some(b"")).await.unwrap();
            assert_eq!(r.next_piece(&mut c.io).await.unwrap().unwrap(), b"data: 1\n\n");
            server.await.unwrap();
            let e = r.next_piece(&mut c.io).await.unwrap_err();
            assert!(matches!(e, HttpError::Closed(_)), "{e}");
        });
    }
}
