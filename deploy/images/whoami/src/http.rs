//! One connection's HTTP/1.x exchange: read a request, discard its body, answer, and keep the connection
//! for the next request unless either side asked to close. Anything malformed gets a 400 and a close.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Identity;

/// An idle keep-alive connection (nginx keeps upstream ones) is closed after this long.
const IDLE: Duration = Duration::from_secs(60);
const MAX_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

struct Request {
    head_only: bool,
    path: String,
    keep_alive: bool,
}

enum Failure {
    /// The peer went away or went quiet: close without answering.
    Io,
    /// The peer sent something we cannot frame: answer 400 and close.
    Bad,
}

impl From<io::Error> for Failure {
    fn from(_: io::Error) -> Failure {
        Failure::Io
    }
}

pub fn serve(stream: TcpStream, identity: &Identity) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) | Err(Failure::Io) => return,
            Err(Failure::Bad) => {
                let _ = respond(
                    &mut writer,
                    "400 Bad Request",
                    "bad request\n",
                    false,
                    false,
                );
                return;
            }
        };
        let path = request.path.split('?').next().unwrap_or("");
        let body = if path == "/health" {
            "ok".to_string()
        } else {
            identity.body()
        };
        let keep = request.keep_alive;
        if respond(&mut writer, "200 OK", &body, request.head_only, keep).is_err() || !keep {
            return;
        }
    }
}

/// `Ok(None)` is a clean end: the peer closed between requests.
fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>, Failure> {
    let mut line = read_line(reader)?;
    // RFC 9112 §2.2: ignore empty lines before a request line.
    while line.as_deref() == Some("") {
        line = read_line(reader)?;
    }
    let Some(line) = line else { return Ok(None) };
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Bad);
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Failure::Bad),
    };
    let (mut length, mut chunked) = (0u64, false);
    for _ in 0..=MAX_HEADERS {
        let header = read_line(reader)?.ok_or(Failure::Bad)?;
        if header.is_empty() {
            discard_body(reader, length, chunked)?;
            let head_only = method == "HEAD";
            return Ok(Some(Request {
                head_only,
                path: path.to_string(),
                keep_alive,
            }));
        }
        let (name, value) = header.split_once(':').ok_or(Failure::Bad)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| Failure::Bad)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
            if !chunked {
                return Err(Failure::Bad);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    Err(Failure::Bad)
}

/// One CRLF- (or LF-) terminated line without its terminator, at most `MAX_LINE` bytes; `None` at EOF.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, Failure> {
    let mut line = String::new();
    let n = reader
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => Failure::Bad,
            _ => Failure::Io,
        })?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(if n as u64 == MAX_LINE {
            Failure::Bad
        } else {
            Failure::Io
        });
    }
    line.pop();
    if line.ends_with('\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Read and drop a request body so that the next request on the connection starts where it should.
fn discard_body(reader: &mut impl BufRead, length: u64, chunked: bool) -> Result<(), Failure> {
    if !chunked {
        return skip(reader, length);
    }
    loop {
        let size_line = read_line(reader)?.ok_or(Failure::Io)?;
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| Failure::Bad)?;
        if size == 0 {
            // Trailers, then the empty line that ends the message.
            while !read_line(reader)?.ok_or(Failure::Io)?.is_empty() {}
            return Ok(());
        }
        skip(reader, size)?;
        if !read_line(reader)?.ok_or(Failure::Io)?.is_empty() {
            return Err(Failure::Bad);
        }
    }
}

fn skip(reader: &mut impl BufRead, n: u64) -> Result<(), Failure> {
    let copied = io::copy(&mut reader.take(n), &mut io::sink())?;
    if copied < n {
        return Err(Failure::Io);
    }
    Ok(())
}

fn respond(
    w: &mut impl Write,
    status: &str,
    body: &str,
    head_only: bool,
    keep: bool,
) -> io::Result<()> {
    let connection = if keep { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    w.write_all(out.as_bytes())?;
    w.flush()
}
