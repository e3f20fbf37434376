/*
 * `log-parser` in C: one raw log line in, one JSON object out (see ../log-parser).
 *
 * A line-for-line port of plugins/log-parser/src/parse.rs: the same output bytes and the
 * same error messages for the same input. Key = the service, header `level`, config
 * `min_level` (default `trace`); a malformed line is fatal with the precise cause.
 * With -DSLUICE_HOSTILE, payload `loop` spins forever and `alloc` allocates without
 * bound (sandbox tests only). Build: build.sh.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice_handler.h"

static const char *const LEVELS[] = {"trace", "debug", "info", "warn", "error", "fatal"};
#define PREFIX "malformed log line"

/* ---- a growable byte buffer ---- */

typedef struct {
    char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) __builtin_trap();
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }
static void putf(buf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, (size_t)n);
}

/* ---- UTF-8 (the input is validated first, so decoding below never fails) ---- */

typedef struct {
    const uint8_t *p;
    size_t len;
} str;

/* Offset of the first invalid byte as Rust's Utf8Error::valid_up_to, or -1 when valid. */
static long utf8_invalid_at(const uint8_t *b, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = b[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else return (long)i;
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= n) return (long)i;
            uint8_t d = b[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xbf)) return (long)i;
        }
        i += need + 1;
    }
    return -1;
}

/* Decodes the code point at p[i]; *len gets its byte length. */
static uint32_t cp_at(str s, size_t i, size_t *len) {
    uint8_t c = s.p[i];
    if (c < 0x80) { *len = 1; return c; }
    if (c < 0xe0) { *len = 2; return ((c & 0x1fu) << 6) | (s.p[i + 1] & 0x3fu); }
    if (c < 0xf0) {
        *len = 3;
        return ((c & 0x0fu) << 12) | ((s.p[i + 1] & 0x3fu) << 6) | (s.p[i + 2] & 0x3fu);
    }
    *len = 4;
    return ((c & 0x07u) << 18) | ((s.p[i + 1] & 0x3fu) << 12) | ((s.p[i + 2] & 0x3fu) << 6) |
           (s.p[i + 3] & 0x3fu);
}

/* Start of the code point that ends at byte end (exclusive). */
static size_t cp_start_before(str s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && (s.p[i] & 0xc0) == 0x80) i--;
    return i;
}

/* Rust's char::is_whitespace (Unicode White_Space). */
static int is_ws(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static str sub(str s, size_t from, size_t to) { return (str){s.p + from, to - from}; }

static str trim_start(str s) {
    size_t i = 0, n;
    while (i < s.len && is_ws(cp_at(s, i, &n))) i += n;
    return sub(s, i, s.len);
}
static str trim_end(str s) {
    size_t j = s.len, n;
    while (j > 0) {
        size_t st = cp_start_before(s, j);
        if (!is_ws(cp_at(s, st, &n))) break;
        j = st;
    }
    return sub(s, 0, j);
}
static str trim(str s) { return trim_end(trim_start(s)); }

static int eq_ignore_ascii_case(str s, const char *lit) {
    size_t n = strlen(lit);
    if (s.len != n) return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s.p[i];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != (uint8_t)lit[i]) return 0;
    }
    return 1;
}

static int parse_level(str name) {
    for (int i = 0; i < 6; i++)
        if (eq_ignore_ascii_case(name, LEVELS[i])) return i;
    return -1;
}

/* Rust's `{:?}` of a string (printable non-ASCII characters are kept as they are). */
static void put_debug(buf *b, str s) {
    puts_(b, "\"");
    size_t i = 0, n;
    while (i < s.len) {
        uint32_t c = cp_at(s, i, &n);
        if (c == '"') puts_(b, "\\\"");
        else if (c == '\\') puts_(b, "\\\\");
        else if (c == '\n') puts_(b, "\\n");
        else if (c == '\r') puts_(b, "\\r");
        else if (c == '\t') puts_(b, "\\t");
        else if (c == 0) puts_(b, "\\0");
        else if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) putf(b, "\\u{%x}", (unsigned)c);
        else put(b, s.p + i, n);
        i += n;
    }
    puts_(b, "\"");
}

static void put_shown(buf *b, str token) {
    if (token.len == 0) { puts_(b, "end of line"); return; }
    size_t i = 0, count = 0, n;
    while (i < token.len && count < 64) { cp_at(token, i, &n); i += n; count++; }
    put_debug(b, sub(token, 0, i));
    if (i < token.len) puts_(b, "...");
}

static void next_token(str s, str *tok, str *rest) {
    s = trim_start(s);
    size_t i = 0, n;
    while (i < s.len && !is_ws(cp_at(s, i, &n))) i += n;
    *tok = sub(s, 0, i);
    *rest = sub(s, i, s.len);
}

static int num(str s, size_t at, size_t len) {
    if (at + len > s.len) return -1;
    int v = 0;
    for (size_t k = at; k < at + len; k++) {
        if (s.p[k] < '0' || s.p[k] > '9') return -1;
        v = v * 10 + (s.p[k] - '0');
    }
    return v;
}
static int sep(str s, size_t at, const char *want) {
    return at < s.len && s.p[at] && strchr(want, s.p[at]) != NULL;
}

static int is_rfc3339(str b) {
    int year = num(b, 0, 4), month = num(b, 5, 2), day = num(b, 8, 2), h = num(b, 11, 2),
        m = num(b, 14, 2), sec = num(b, 17, 2);
    if (year < 0 || month < 0 || day < 0 || h < 0 || m < 0 || sec < 0) return 0;
    int leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    const int days[12] = {31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!(sep(b, 4, "-") && sep(b, 7, "-") && sep(b, 10, "Tt") && sep(b, 13, ":") &&
          sep(b, 16, ":")))
        return 0;
    if (!(month >= 1 && month <= 12 && day >= 1 && day <= days[month - 1])) return 0;
    if (h > 23 || m > 59 || sec > 60) return 0;
    size_t i = 19;
    if (sep(b, i, ".")) {
        size_t frac = 0;
        while (i + 1 + frac < b.len && b.p[i + 1 + frac] >= '0' && b.p[i + 1 + frac] <= '9') frac++;
        if (frac == 0) return 0;
        i += 1 + frac;
    }
    if (i >= b.len) return 0;
    if (b.p[i] == 'Z' || b.p[i] == 'z') return i + 1 == b.len;
    if (b.p[i] == '+' || b.p[i] == '-') {
        int oh = num(b, i + 1, 2), om = num(b, i + 4, 2);
        return i + 6 == b.len && sep(b, i + 3, ":") && oh >= 0 && oh <= 23 && om >= 0 && om <= 59;
    }
    return 0;
}

typedef struct {
    str k, v;
} field_t;

typedef struct {
    str ts, service, message;
    int level;
    field_t *fields;
    size_t nfields;
} record;

static int field(str t, field_t *out) {
    size_t eq = 0;
    while (eq < t.len && t.p[eq] != '=') eq++;
    if (eq == t.len || eq == 0) return 0;
    for (size_t i = 0; i < eq; i++) {
        uint8_t c = t.p[i];
        int ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 c == '_' || c == '.' || c == '-';
        if (!ok) return 0;
    }
    out->k = sub(t, 0, eq);
    out->v = sub(t, eq + 1, t.len);
    return 1;
}

static int str_eq(str a, str b) { return a.len == b.len && memcmp(a.p, b.p, a.len) == 0; }

static void split_fields(str message, record *r) {
    field_t *found = NULL;
    size_t nfound = 0;
    for (;;) {
        /* rsplit_once at the last whitespace character */
        size_t j = message.len, n;
        long cut = -1;
        size_t cutlen = 0;
        while (j > 0) {
            size_t st = cp_start_before(message, j);
            if (is_ws(cp_at(message, st, &n))) { cut = (long)st; cutlen = n; break; }
            j = st;
        }
        str head, last;
        if (cut >= 0) {
            head = trim_end(sub(message, 0, (size_t)cut));
            last = sub(message, (size_t)cut + cutlen, message.len);
        } else {
            head = sub(message, 0, 0);
            last = message;
        }
        field_t f;
        if (!field(last, &f)) break;
        found = realloc(found, (nfound + 1) * sizeof(field_t));
        if (!found) __builtin_trap();
        found[nfound++] = f;
        message = head;
        if (message.len == 0) break;
    }
    r->fields = malloc((nfound ? nfound : 1) * sizeof(field_t));
    if (!r->fields) __builtin_trap();
    r->nfields = 0;
    for (size_t i = nfound; i-- > 0;) {
        size_t s = 0;
        while (s < r->nfields && !str_eq(r->fields[s].k, found[i].k)) s++;
        if (s < r->nfields) r->fields[s].v = found[i].v;
        else r->fields[r->nfields++] = found[i];
    }
    free(found);
    r->message = message;
}

/* Parses one line into *r; on error, writes the message into *err and returns 0. */
static int parse_line(str bytes, record *r, buf *err) {
    long bad = utf8_invalid_at(bytes.p, bytes.len);
    if (bad >= 0) {
        putf(err, PREFIX ": not valid UTF-8 (invalid byte at offset %ld)", bad);
        return 0;
    }
    str line = bytes;
    while (line.len > 0 && (line.p[line.len - 1] == '\n' || line.p[line.len - 1] == '\r')) line.len--;
    line = trim_start(line);
    if (trim_end(line).len == 0) {
        puts_(err, PREFIX ": empty line");
        return 0;
    }
    str ts, rest, level_name, svc_rest;
    next_token(line, &ts, &rest);
    if (!is_rfc3339(ts)) {
        puts_(err, PREFIX ": expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) at the start, found ");
        put_shown(err, ts);
        return 0;
    }
    next_token(rest, &level_name, &rest);
    r->level = parse_level(level_name);
    if (r->level < 0) {
        puts_(err, PREFIX ": expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found ");
        put_shown(err, level_name);
        return 0;
    }
    svc_rest = trim_start(rest);
    if (svc_rest.len == 0 || svc_rest.p[0] != '[') {
        str found, ignored;
        next_token(svc_rest, &found, &ignored);
        puts_(err, PREFIX ": expected \"[service]\" after the level, found ");
        put_shown(err, found);
        return 0;
    }
    str inner = sub(svc_rest, 1, svc_rest.len);
    size_t close = 0;
    while (close < inner.len && inner.p[close] != ']') close++;
    if (close == inner.len) {
        puts_(err, PREFIX ": \"[\" opens the service name but no \"]\" closes it");
        return 0;
    }
    str name = sub(inner, 0, close), after = sub(inner, close + 1, inner.len);
    if (trim(name).len == 0) {
        puts_(err, PREFIX ": the service name between \"[\" and \"]\" is empty");
        return 0;
    }
    size_t n;
    if (after.len > 0 && !is_ws(cp_at(after, 0, &n))) {
        puts_(err, PREFIX ": expected a space after \"[");
        put(err, name.p, name.len);
        puts_(err, "]\", found ");
        put_shown(err, after);
        return 0;
    }
    r->ts = ts;
    r->service = name;
    split_fields(trim(after), r);
    return 1;
}

static void put_json(buf *b, str s) {
    puts_(b, "\"");
    for (size_t i = 0; i < s.len; i++) {
        uint8_t c = s.p[i];
        if (c == '"') puts_(b, "\\\"");
        else if (c == '\\') puts_(b, "\\\\");
        else if (c == '\n') puts_(b, "\\n");
        else if (c == '\r') puts_(b, "\\r");
        else if (c == '\t') puts_(b, "\\t");
        else if (c < 0x20 || c == 0x7f) putf(b, "\\u%04x", (unsigned)c);
        else put(b, &s.p[i], 1);
    }
    puts_(b, "\"");
}

static str cstr(const char *s) { return (str){(const uint8_t *)s, strlen(s)}; }

static void to_json(buf *b, const record *r) {
    puts_(b, "{\"ts\":");
    put_json(b, r->ts);
    puts_(b, ",\"level\":");
    put_json(b, cstr(LEVELS[r->level]));
    puts_(b, ",\"service\":");
    put_json(b, r->service);
    puts_(b, ",\"message\":");
    put_json(b, r->message);
    puts_(b, ",\"fields\":{");
    for (size_t i = 0; i < r->nfields; i++) {
        if (i > 0) puts_(b, ",");
        put_json(b, r->fields[i].k);
        puts_(b, ":");
        put_json(b, r->fields[i].v);
    }
    puts_(b, "}}");
}

/* ---- the handler ---- */

static int min_level = 0;

bool sluice_init(const sluice_config_entry *config, size_t config_len) {
    str raw = cstr("trace");
    for (size_t i = 0; i < config_len; i++) /* like a map built from the list: last wins */
        if (str_eq((str){config[i].key.ptr, config[i].key.len}, cstr("min_level")))
            raw = trim((str){config[i].value.ptr, config[i].value.len});
    int level = parse_level(raw);
    if (level < 0) {
        buf e = {0};
        puts_(&e, "config `min_level`: unknown level ");
        put_debug(&e, raw);
        puts_(&e, " (expected trace, debug, info, warn, error or fatal)");
        sluice_set_error(e.p, e.len);
        free(e.p);
        return false;
    }
    min_level = level;
    return true;
}

sluice_status sluice_handle(const sluice_message *msg) {
#ifdef SLUICE_HOSTILE
    if (msg->payload.len == 4 && memcmp(msg->payload.ptr, "loop", 4) == 0) {
        volatile unsigned long spins = 0;
        for (;;) spins++;
    }
    if (msg->payload.len == 5 && memcmp(msg->payload.ptr, "alloc", 5) == 0) {
        /* Chain the blocks so the compiler cannot drop the allocations. */
        static void *volatile head;
        for (;;) {
            void **p = malloc(1 << 20);
            if (!p) __builtin_trap();
            memset(p, 1, 1 << 20);
            *p = head;
            head = p;
        }
    }
#endif
    record r = {0};
    buf out = {0};
    if (!parse_line((str){msg->payload.ptr, msg->payload.len}, &r, &out)) {
        sluice_set_error(out.p, out.len);
        free(out.p);
        return SLUICE_FATAL;
    }
    if (r.level >= min_level) {
        to_json(&out, &r);
        sluice_output *o = sluice_emit(out.p, out.len);
        if (!o) __builtin_trap();
        sluice_output_key(o, r.service.p, r.service.len);
        sluice_output_header(o, "level", 5, LEVELS[r.level], strlen(LEVELS[r.level]));
    }
    free(r.fields);
    free(out.p);
    return SLUICE_OK;
}
