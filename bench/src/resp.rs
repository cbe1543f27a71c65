//! RESP2, the Redis wire protocol: just enough to encode commands and decode their replies.
//!
//! Bulk strings are binary-safe (length-prefixed), so record payloads travel unchanged. Decoding
//! is bounded: a bulk string or array above the named limits is an error, not an allocation.

use std::io::{self, BufRead, Read};

/// Largest bulk string accepted in a reply (records are at most 1 MB).
pub const BULK_BYTES_MAX: usize = 16 << 20;
/// Most elements accepted in one reply array.
pub const ARRAY_LEN_MAX: usize = 1 << 20;
/// Deepest nesting accepted (an XREAD reply is 5 levels deep).
const DEPTH_MAX: usize = 8;

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$n` bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` values, or `*-1` (nil).
    Array(Option<Vec<Value>>),
}

/// Appends the encoding of a command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn read_line(input: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let read = input.take(BULK_BYTES_MAX as u64).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("reply line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("reply line is not UTF-8".into()))
}

fn length(text: &str, max: usize) -> io::Result<Option<usize>> {
    let n: i64 = text.parse().map_err(|_| invalid(format!("bad length {text:?}")))?;
    if n < 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| invalid(format!("length {n} too large")))?;
    if n > max {
        return Err(invalid(format!("length {n} above limit {max}")));
    }
    Ok(Some(n))
}

/// Reads one reply.
pub fn read_value(input: &mut impl BufRead) -> io::Result<Value> {
    read_nested(input, 0)
}

fn read_nested(input: &mut impl BufRead, depth: usize) -> io::Result<Value> {
    if depth > DEPTH_MAX {
        return Err(invalid("reply nested too deeply".into()));
    }
    let line = read_line(input)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Value::Simple(rest.into())),
        "-" => Ok(Value::Error(rest.into())),
        ":" => rest.parse().map(Value::Integer).map_err(|_| invalid(format!("bad integer {rest:?}"))),
        "$" => match length(rest, BULK_BYTES_MAX)? {
            None => Ok(Value::Bulk(None)),
            Some(n) => {
                let mut bytes = vec![0u8; n + 2];
                input.read_exact(&mut bytes)?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(invalid("bulk string without CRLF".into()));
                }
                bytes.truncate(n);
                Ok(Value::Bulk(Some(bytes)))
            }
        },
        "*" => match length(rest, ARRAY_LEN_MAX)? {
            None => Ok(Value::Array(None)),
            Some(n) => (0..n).map(|_| read_nested(input, depth + 1)).collect::<io::Result<_>>().map(|v| Value::Array(Some(v))),
        },
        _ => Err(invalid(format!("unknown reply type in {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_binary_safe() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"XADD", b"s", b"*", b"v", b"a\r\nb"]);
        assert_eq!(out, b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nv\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn nested_replies_decode_and_limits_hold() {
        let xread = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nv\r\n$4\r\na\r\nb\r\n";
        let value = read_value(&mut &xread[..]).unwrap();
        let entry = Value::Array(Some(vec![
            Value::Bulk(Some(b"1-0".to_vec())),
            Value::Array(Some(vec![Value::Bulk(Some(b"v".to_vec())), Value::Bulk(Some(b"a\r\nb".to_vec()))])),
        ]));
        let stream = Value::Array(Some(vec![Value::Bulk(Some(b"s".to_vec())), Value::Array(Some(vec![entry]))]));
        assert_eq!(value, Value::Array(Some(vec![stream])));
        assert_eq!(read_value(&mut &b"*-1\r\n"[..]).unwrap(), Value::Array(None));
        assert_eq!(read_value(&mut &b"-ERR no\r\n"[..]).unwrap(), Value::Error("ERR no".into()));
        assert_eq!(read_value(&mut &b":7\r\n"[..]).unwrap(), Value::Integer(7));
        assert!(read_value(&mut &b"$99999999999\r\n"[..]).is_err());
        assert!(read_value(&mut &b"$3\r\nab"[..]).is_err());
        assert!(read_value(&mut &b"?\r\n"[..]).is_err());
        assert!(read_value(&mut &b""[..]).is_err());
    }
}
