// Command log-parser-go is `log-parser` in Go: one raw log line in, one JSON object out
// (see ../log-parser). A line-for-line port of plugins/log-parser/src/parse.rs: the same
// output bytes and the same error messages for the same input. Key = the service, header
// `level`, config `min_level` (default `trace`); a malformed line is fatal with the
// precise cause. Build: build.sh.
package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"sluice.dev/guest/sluice"
)

var levels = []string{"trace", "debug", "info", "warn", "error", "fatal"}

const prefix = "malformed log line"

var minLevel = 0

func init() {
	sluice.Init = func(config [][2]string) error {
		raw := "trace"
		for _, kv := range config { // like a map built from the list: the last value wins
			if kv[0] == "min_level" {
				raw = strings.TrimFunc(kv[1], isWs)
			}
		}
		l := parseLevel(raw)
		if l < 0 {
			return errors.New("config `min_level`: unknown level " + debugStr(raw) +
				" (expected trace, debug, info, warn, error or fatal)")
		}
		minLevel = l
		return nil
	}
	sluice.Handle = func(msg sluice.Message) ([]sluice.Output, *sluice.HandlerError) {
		r, err := parseLine(msg.Payload)
		if err != "" {
			return nil, sluice.Fatal(err)
		}
		if r.level < minLevel {
			return nil, nil
		}
		return []sluice.Output{{
			Key:     []byte(r.service),
			Payload: []byte(toJSON(&r)),
			Headers: []sluice.Header{{Key: "level", Value: []byte(levels[r.level])}},
		}}, nil
	}
}

func main() {}

// isWs is Rust's char::is_whitespace (Unicode White_Space).
func isWs(c rune) bool {
	return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
		(c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
		c == 0x205f || c == 0x3000
}

func parseLevel(name string) int {
	for i, l := range levels {
		if len(name) == len(l) && asciiLower(name) == l {
			return i
		}
	}
	return -1
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// debugStr is Rust's `{:?}` of a string (printable non-ASCII characters are kept as they are).
func debugStr(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == 0:
			b.WriteString(`\0`)
		case c < 0x20 || (c >= 0x7f && c <= 0x9f):
			b.WriteString(`\u{` + strconv.FormatInt(int64(c), 16) + `}`)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func shown(token string) string {
	if token == "" {
		return "end of line"
	}
	n := 0
	for i := range token {
		if n == 64 {
			return debugStr(token[:i]) + "..."
		}
		n++
	}
	return debugStr(token)
}

func nextToken(s string) (string, string) {
	s = strings.TrimLeftFunc(s, isWs)
	if i := strings.IndexFunc(s, isWs); i >= 0 {
		return s[:i], s[i:]
	}
	return s, ""
}

func isRFC3339(b string) bool {
	num := func(at, n int) int {
		if at+n > len(b) {
			return -1
		}
		v := 0
		for k := at; k < at+n; k++ {
			if b[k] < '0' || b[k] > '9' {
				return -1
			}
			v = v*10 + int(b[k]-'0')
		}
		return v
	}
	sep := func(at int, want string) bool { return at < len(b) && strings.IndexByte(want, b[at]) >= 0 }
	year, month, day, h, m, sec := num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2)
	if year < 0 || month < 0 || day < 0 || h < 0 || m < 0 || sec < 0 {
		return false
	}
	leap := year%4 == 0 && (year%100 != 0 || year%400 == 0)
	feb := 28
	if leap {
		feb = 29
	}
	days := []int{31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	if !(sep(4, "-") && sep(7, "-") && sep(10, "Tt") && sep(13, ":") && sep(16, ":")) {
		return false
	}
	if !(month >= 1 && month <= 12 && day >= 1 && day <= days[month-1]) {
		return false
	}
	if h > 23 || m > 59 || sec > 60 {
		return false
	}
	i := 19
	if sep(i, ".") {
		frac := 0
		for i+1+frac < len(b) && b[i+1+frac] >= '0' && b[i+1+frac] <= '9' {
			frac++
		}
		if frac == 0 {
			return false
		}
		i += 1 + frac
	}
	if i >= len(b) {
		return false
	}
	switch b[i] {
	case 'Z', 'z':
		return i+1 == len(b)
	case '+', '-':
		oh, om := num(i+1, 2), num(i+4, 2)
		return i+6 == len(b) && sep(i+3, ":") && oh >= 0 && oh <= 23 && om >= 0 && om <= 59
	}
	return false
}

type record struct {
	ts, service, message string
	level                int
	fields               [][2]string
}

func field(t string) (string, string, bool) {
	k, v, ok := strings.Cut(t, "=")
	if !ok || k == "" {
		return "", "", false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			c == '_' || c == '.' || c == '-') {
			return "", "", false
		}
	}
	return k, v, true
}

func splitFields(message string) (string, [][2]string) {
	var found [][2]string
	for {
		var head, last string
		if i := strings.LastIndexFunc(message, isWs); i >= 0 {
			_, n := utf8.DecodeRuneInString(message[i:])
			head, last = strings.TrimRightFunc(message[:i], isWs), message[i+n:]
		} else {
			head, last = "", message
		}
		k, v, ok := field(last)
		if !ok {
			break
		}
		found = append(found, [2]string{k, v})
		message = head
		if message == "" {
			break
		}
	}
	var fields [][2]string
	for i := len(found) - 1; i >= 0; i-- {
		slot := -1
		for j := range fields {
			if fields[j][0] == found[i][0] {
				slot = j
			}
		}
		if slot >= 0 {
			fields[slot][1] = found[i][1]
		} else {
			fields = append(fields, found[i])
		}
	}
	return message, fields
}

// parseLine returns the record, or the precise cause of the error.
func parseLine(bytes []byte) (record, string) {
	for i := 0; i < len(bytes); {
		c, n := utf8.DecodeRune(bytes[i:])
		if c == utf8.RuneError && n == 1 {
			return record{}, fmt.Sprintf("%s: not valid UTF-8 (invalid byte at offset %d)", prefix, i)
		}
		i += n
	}
	line := strings.TrimLeftFunc(strings.TrimRight(string(bytes), "\r\n"), isWs)
	if strings.TrimRightFunc(line, isWs) == "" {
		return record{}, prefix + ": empty line"
	}
	ts, rest := nextToken(line)
	if !isRFC3339(ts) {
		return record{}, prefix + ": expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) at the start, found " + shown(ts)
	}
	levelName, rest := nextToken(rest)
	level := parseLevel(levelName)
	if level < 0 {
		return record{}, prefix + ": expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found " + shown(levelName)
	}
	rest = strings.TrimLeftFunc(rest, isWs)
	if !strings.HasPrefix(rest, "[") {
		found, _ := nextToken(rest)
		return record{}, prefix + `: expected "[service]" after the level, found ` + shown(found)
	}
	inner := rest[1:]
	end := strings.IndexByte(inner, ']')
	if end < 0 {
		return record{}, prefix + `: "[" opens the service name but no "]" closes it`
	}
	name, after := inner[:end], inner[end+1:]
	if strings.TrimFunc(name, isWs) == "" {
		return record{}, prefix + `: the service name between "[" and "]" is empty`
	}
	if after != "" {
		if c, _ := utf8.DecodeRuneInString(after); !isWs(c) {
			return record{}, prefix + `: expected a space after "[` + name + `]", found ` + shown(after)
		}
	}
	message, fields := splitFields(strings.TrimFunc(after, isWs))
	return record{ts: ts, level: level, service: name, message: message, fields: fields}, ""
}

func jsonStr(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

func toJSON(r *record) string {
	var b strings.Builder
	b.WriteString(`{"ts":`)
	jsonStr(&b, r.ts)
	b.WriteString(`,"level":`)
	jsonStr(&b, levels[r.level])
	b.WriteString(`,"service":`)
	jsonStr(&b, r.service)
	b.WriteString(`,"message":`)
	jsonStr(&b, r.message)
	b.WriteString(`,"fields":{`)
	for i, f := range r.fields {
		if i > 0 {
			b.WriteByte(',')
		}
		jsonStr(&b, f[0])
		b.WriteByte(':')
		jsonStr(&b, f[1])
	}
	b.WriteString(`}}`)
	return b.String()
}
