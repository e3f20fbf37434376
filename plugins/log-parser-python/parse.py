"""Parses `<RFC 3339 timestamp> <LEVEL> [<service>] <message> [k=v ...]` and renders JSON.

A line-for-line port of plugins/log-parser/src/parse.rs: the same output bytes and the
same error messages for the same input. Plain functions with no host calls, so they run
under any CPython (`python3 -c 'import parse; ...'`).
"""

LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"]
PREFIX = "malformed log line"

# Rust's `char::is_whitespace` (Unicode White_Space), which differs from `str.isspace`.
_WS = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def is_ws(c):
    return c in _WS


def trim_start(s):
    i = 0
    while i < len(s) and s[i] in _WS:
        i += 1
    return s[i:]


def trim_end(s):
    j = len(s)
    while j > 0 and s[j - 1] in _WS:
        j -= 1
    return s[:j]


def trim(s):
    return trim_end(trim_start(s))


def _ascii_lower(s):
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def parse_level(name):
    """The level's index (0 = trace) for a name in any ASCII case, or None."""
    low = _ascii_lower(name)
    return LEVELS.index(low) if low in LEVELS else None


def debug_str(s):
    """Rust's `{:?}` of a string (printable non-ASCII characters are kept as they are)."""
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\0":
            out.append("\\0")
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.append("\\u{%x}" % o)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def shown(token):
    if not token:
        return "end of line"
    if len(token) > 64:
        return debug_str(token[:64]) + "..."
    return debug_str(token)


def next_token(s):
    s = trim_start(s)
    for i, c in enumerate(s):
        if c in _WS:
            return s[:i], s[i:]
    return s, ""


def is_rfc3339(s):
    b = s.encode("utf-8")

    def num(at, n):
        d = b[at : at + n]
        if len(d) != n or not all(48 <= x <= 57 for x in d):
            return None
        return int(d)

    def sep(at, want):
        return at < len(b) and b[at] in want

    parts = [num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2)]
    if any(p is None for p in parts):
        return False
    year, month, day, h, m, sec = parts
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    if not (sep(4, b"-") and sep(7, b"-") and sep(10, b"Tt") and sep(13, b":") and sep(16, b":")):
        return False
    if not (1 <= month <= 12 and 1 <= day <= days[month - 1]):
        return False
    if h > 23 or m > 59 or sec > 60:
        return False
    i = 19
    if sep(i, b"."):
        frac = 0
        while i + 1 + frac < len(b) and 48 <= b[i + 1 + frac] <= 57:
            frac += 1
        if frac == 0:
            return False
        i += 1 + frac
    if i >= len(b):
        return False
    c = b[i]
    if c in b"Zz":
        return i + 1 == len(b)
    if c in b"+-":
        oh, om = num(i + 1, 2), num(i + 4, 2)
        return (
            i + 6 == len(b)
            and sep(i + 3, b":")
            and oh is not None
            and oh <= 23
            and om is not None
            and om <= 59
        )
    return False


class ParseError(Exception):
    pass


def _service(rest):
    rest = trim_start(rest)
    if not rest.startswith("["):
        found, _ = next_token(rest)
        raise ParseError(f'{PREFIX}: expected "[service]" after the level, found {shown(found)}')
    inner = rest[1:]
    close = inner.find("]")
    if close < 0:
        raise ParseError(f'{PREFIX}: "[" opens the service name but no "]" closes it')
    name, after = inner[:close], inner[close + 1 :]
    if not trim(name):
        raise ParseError(f'{PREFIX}: the service name between "[" and "]" is empty')
    if after and after[0] not in _WS:
        raise ParseError(f'{PREFIX}: expected a space after "[{name}]", found {shown(after)}')
    return name, after


def _field(token):
    k, eq, v = token.partition("=")
    if not eq or not k:
        return None
    for c in k:
        if not (c.isascii() and (c.isalnum() or c in "_.-")):
            return None
    return k, v


def _split_fields(message):
    found = []
    while True:
        cut = -1
        for i in range(len(message) - 1, -1, -1):
            if message[i] in _WS:
                cut = i
                break
        if cut >= 0:
            head, last = trim_end(message[:cut]), message[cut + 1 :]
        else:
            head, last = "", message
        kv = _field(last)
        if kv is None:
            break
        found.append(kv)
        message = head
        if not message:
            break
    fields = {}
    for k, v in reversed(found):
        fields[k] = v  # dicts keep first insertion order, last value
    return message, list(fields.items())


def parse_line(data):
    """(ts, level index, service, message, fields) or ParseError with the precise cause."""
    try:
        line = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"{PREFIX}: not valid UTF-8 (invalid byte at offset {e.start})") from None
    line = trim_start(line.rstrip("\r\n"))
    if not trim_end(line):
        raise ParseError(f"{PREFIX}: empty line")
    ts, rest = next_token(line)
    if not is_rfc3339(ts):
        raise ParseError(
            f"{PREFIX}: expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) "
            f"at the start, found {shown(ts)}"
        )
    level_name, rest = next_token(rest)
    level = parse_level(level_name)
    if level is None:
        raise ParseError(
            f"{PREFIX}: expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the "
            f"timestamp, found {shown(level_name)}"
        )
    service, rest = _service(rest)
    message, fields = _split_fields(trim(rest))
    return ts, level, service, message, fields


def _json_str(s):
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append("\\u%04x" % o)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def to_json(ts, level, service, message, fields):
    body = ",".join(_json_str(k) + ":" + _json_str(v) for k, v in fields)
    return (
        '{"ts":' + _json_str(ts) + ',"level":' + _json_str(LEVELS[level])
        + ',"service":' + _json_str(service) + ',"message":' + _json_str(message)
        + ',"fields":{' + body + "}}"
    )
