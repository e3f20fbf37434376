// `log-parser` in JavaScript: one raw log line in, one JSON object out (see ../log-parser).
//
// A line-for-line port of plugins/log-parser/src/parse.rs: the same output bytes and the
// same error messages for the same input. Key = the service, header `level`, config
// `min_level` (default `trace`); a malformed line is `fatal` with the precise cause.
// Strings are handled as arrays of code points (JS strings are UTF-16). Built with
// componentize-js: see build.sh.

const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"];
const PREFIX = "malformed log line";

// Rust's `char::is_whitespace` (Unicode White_Space); JS's `\s` differs (U+FEFF, U+0085).
const WS = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f,
  0x3000,
]);
const isWs = (cp) => WS.has(cp);

// A "string" below is an array of code points.
const str = (cps) => String.fromCodePoint(...cps);
const cpsOf = (s) => Array.from(s, (c) => c.codePointAt(0));

function trimStart(s) {
  let i = 0;
  while (i < s.length && isWs(s[i])) i++;
  return s.slice(i);
}
function trimEnd(s) {
  let j = s.length;
  while (j > 0 && isWs(s[j - 1])) j--;
  return s.slice(0, j);
}
const trim = (s) => trimEnd(trimStart(s));

/** Decodes UTF-8 as Rust's `str::from_utf8` does: code points, or the offset of the bad byte. */
function decodeUtf8(b) {
  const out = [];
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    let need, cp, lo = 0x80, hi = 0xbf;
    if (c < 0x80) { out.push(c); i++; continue; }
    else if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2; cp = c & 0x0f;
      if (c === 0xe0) lo = 0xa0;
      if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3; cp = c & 0x07;
      if (c === 0xf0) lo = 0x90;
      if (c === 0xf4) hi = 0x8f;
    } else return { bad: i };
    for (let k = 1; k <= need; k++) {
      const d = b[i + k];
      if (d === undefined || d < (k === 1 ? lo : 0x80) || d > (k === 1 ? hi : 0xbf)) return { bad: i };
      cp = (cp << 6) | (d & 0x3f);
    }
    out.push(cp);
    i += need + 1;
  }
  return { cps: out };
}

function asciiLower(s) {
  return s.map((c) => (c >= 0x41 && c <= 0x5a ? c + 32 : c));
}
function parseLevel(name) {
  const i = LEVELS.indexOf(str(asciiLower(name)));
  return i < 0 ? null : i;
}

/** Rust's `{:?}` of a string (printable non-ASCII characters are kept as they are). */
function debugStr(s) {
  let out = '"';
  for (const c of s) {
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c === 0) out += "\\0";
    else if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) out += "\\u{" + c.toString(16) + "}";
    else out += String.fromCodePoint(c);
  }
  return out + '"';
}
function shown(token) {
  if (token.length === 0) return "end of line";
  if (token.length > 64) return debugStr(token.slice(0, 64)) + "...";
  return debugStr(token);
}

function nextToken(s) {
  s = trimStart(s);
  const i = s.findIndex(isWs);
  return i < 0 ? [s, []] : [s.slice(0, i), s.slice(i)];
}

function isRfc3339(s) {
  const b = new TextEncoder().encode(str(s));
  const isDigit = (x) => x >= 0x30 && x <= 0x39;
  const num = (at, len) => {
    if (at + len > b.length) return null;
    let n = 0;
    for (let k = at; k < at + len; k++) {
      if (!isDigit(b[k])) return null;
      n = n * 10 + (b[k] - 0x30);
    }
    return n;
  };
  const sep = (at, want) => at < b.length && want.includes(String.fromCharCode(b[at]));
  const parts = [num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2)];
  if (parts.some((p) => p === null)) return false;
  const [year, month, day, h, m, sec] = parts;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  if (!(sep(4, "-") && sep(7, "-") && sep(10, "Tt") && sep(13, ":") && sep(16, ":"))) return false;
  if (!(month >= 1 && month <= 12 && day >= 1 && day <= days[month - 1])) return false;
  if (h > 23 || m > 59 || sec > 60) return false;
  let i = 19;
  if (sep(i, ".")) {
    let frac = 0;
    while (i + 1 + frac < b.length && isDigit(b[i + 1 + frac])) frac++;
    if (frac === 0) return false;
    i += 1 + frac;
  }
  if (i >= b.length) return false;
  const c = String.fromCharCode(b[i]);
  if (c === "Z" || c === "z") return i + 1 === b.length;
  if (c === "+" || c === "-") {
    const oh = num(i + 1, 2), om = num(i + 4, 2);
    return i + 6 === b.length && sep(i + 3, ":") && oh !== null && oh <= 23 && om !== null && om <= 59;
  }
  return false;
}

class ParseError extends Error {}

function service(rest) {
  rest = trimStart(rest);
  if (rest[0] !== 0x5b) {
    const [found] = nextToken(rest);
    throw new ParseError(`${PREFIX}: expected "[service]" after the level, found ${shown(found)}`);
  }
  const inner = rest.slice(1);
  const close = inner.indexOf(0x5d);
  if (close < 0) throw new ParseError(`${PREFIX}: "[" opens the service name but no "]" closes it`);
  const name = inner.slice(0, close), after = inner.slice(close + 1);
  if (trim(name).length === 0) {
    throw new ParseError(`${PREFIX}: the service name between "[" and "]" is empty`);
  }
  if (after.length > 0 && !isWs(after[0])) {
    throw new ParseError(`${PREFIX}: expected a space after "[${str(name)}]", found ${shown(after)}`);
  }
  return [name, after];
}

function field(token) {
  const eq = token.indexOf(0x3d);
  if (eq <= 0) return null;
  const k = token.slice(0, eq);
  const ok = k.every((c) =>
    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ||
    c === 0x5f || c === 0x2e || c === 0x2d);
  return ok ? [str(k), str(token.slice(eq + 1))] : null;
}

function splitFields(message) {
  const found = [];
  for (;;) {
    let cut = -1;
    for (let i = message.length - 1; i >= 0; i--) {
      if (isWs(message[i])) { cut = i; break; }
    }
    const [head, last] = cut >= 0 ? [trimEnd(message.slice(0, cut)), message.slice(cut + 1)] : [[], message];
    const kv = field(last);
    if (kv === null) break;
    found.push(kv);
    message = head;
    if (message.length === 0) break;
  }
  const fields = new Map(); // keeps first insertion order, last value
  for (const [k, v] of found.reverse()) fields.set(k, v);
  return [message, [...fields]];
}

export function parseLine(bytes) {
  const d = decodeUtf8(bytes);
  if (d.bad !== undefined) {
    throw new ParseError(`${PREFIX}: not valid UTF-8 (invalid byte at offset ${d.bad})`);
  }
  let line = d.cps;
  let end = line.length;
  while (end > 0 && (line[end - 1] === 0x0a || line[end - 1] === 0x0d)) end--;
  line = trimStart(line.slice(0, end));
  if (trimEnd(line).length === 0) throw new ParseError(`${PREFIX}: empty line`);
  const [ts, rest1] = nextToken(line);
  if (!isRfc3339(ts)) {
    throw new ParseError(
      `${PREFIX}: expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) at the start, found ${shown(ts)}`);
  }
  const [levelName, rest2] = nextToken(rest1);
  const level = parseLevel(levelName);
  if (level === null) {
    throw new ParseError(
      `${PREFIX}: expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found ${shown(levelName)}`);
  }
  const [svc, rest3] = service(rest2);
  const [message, fields] = splitFields(trim(rest3));
  return { ts: str(ts), level, service: str(svc), message: str(message), fields };
}

function jsonStr(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

export function toJson(r) {
  const fields = r.fields.map(([k, v]) => jsonStr(k) + ":" + jsonStr(v)).join(",");
  return `{"ts":${jsonStr(r.ts)},"level":${jsonStr(LEVELS[r.level])},"service":${jsonStr(r.service)},` +
    `"message":${jsonStr(r.message)},"fields":{${fields}}}`;
}

let minLevel = 0;

/** `init` of the world: reads `min_level`; a thrown string is the `err` of the result. */
export function init(config) {
  let raw = cpsOf("trace");
  for (const [k, v] of config) if (k === "min_level") raw = trim(cpsOf(v)); // last wins
  const level = parseLevel(raw);
  if (level === null) {
    throw `config \`min_level\`: unknown level ${debugStr(raw)} (expected trace, debug, info, warn, error or fatal)`;
  }
  minLevel = level;
}

/** `handle` of the world: a thrown `{ tag: "fatal", val }` is the `handler-error`. */
export function handle(msg) {
  let r;
  try {
    r = parseLine(msg.payload);
  } catch (e) {
    if (e instanceof ParseError) throw { tag: "fatal", val: e.message };
    throw e;
  }
  if (r.level < minLevel) return [];
  const enc = new TextEncoder();
  return [{
    sink: undefined,
    topic: undefined,
    key: enc.encode(r.service),
    payload: enc.encode(toJson(r)),
    headers: [{ key: "level", value: enc.encode(LEVELS[r.level]) }],
  }];
}
