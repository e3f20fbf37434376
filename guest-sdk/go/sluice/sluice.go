// Package sluice is the Go guest SDK of Sluice: canonical-ABI glue for the
// `sluice:handler@0.1.0` world (guest-sdk/wit/handler.wit), written by hand with
// `//go:wasmexport` / `//go:wasmimport`. Build the handler with
// `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`; the Sluice runtime turns the
// core module into a component when it loads it (see ../README.md).
//
// Set Handle (and optionally Init) from the main package's init function.
//
// Memory: the host writes a call's arguments into a fixed arena through `cabi_realloc`,
// which must not allocate on the Go heap (the Go allocator may call WASI imports, which
// the component model forbids while the host is lowering arguments). One message's
// topic, key, payload and headers together must fit in ArenaSize bytes.
package sluice

import (
	"encoding/binary"
	"unsafe"
)

// ArenaSize bounds the bytes of one call's arguments.
const ArenaSize = 8 << 20

// Header is one message or output header.
type Header struct {
	Key   string
	Value []byte
}

// Message is what the source delivered. All of it is a copy the handler may keep.
type Message struct {
	Topic string
	// Key is nil when the message has none.
	Key         []byte
	Payload     []byte
	Headers     []Header
	TimestampMs *uint64
	Attempt     uint32
}

// Output is one message to publish. Nil Sink, Topic and Key mean none.
type Output struct {
	Sink    *string
	Topic   *string
	Key     []byte
	Payload []byte
	Headers []Header
}

// HandlerError refuses a message: retriable (retried by policy) or fatal.
type HandlerError struct {
	Retriable bool
	Message   string
}

// Fatal is a permanent refusal.
func Fatal(msg string) *HandlerError { return &HandlerError{Message: msg} }

// Retriable is a transient refusal.
func Retriable(msg string) *HandlerError { return &HandlerError{Retriable: true, Message: msg} }

// Init is called once per instance with the `[handler.config]` pairs; an error refuses the plugin.
var Init func(config [][2]string) error

// Handle is called once per message.
var Handle func(msg Message) ([]Output, *HandlerError)

// ---- memory ----

var (
	arena [ArenaSize]byte
	used  uintptr
	// Results handed to the host stay referenced until the post-return call.
	keep [][]byte
	ret  [16]byte
)

//go:wasmexport cabi_realloc
func cabiRealloc(old unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	if align == 0 {
		align = 1
	}
	start := (used + uintptr(align) - 1) &^ (uintptr(align) - 1)
	if start+uintptr(newSize) > ArenaSize {
		panic("sluice: a call's arguments exceed the guest arena (sluice.ArenaSize)")
	}
	used = start + uintptr(newSize)
	p := unsafe.Pointer(&arena[start])
	if old != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), newSize), unsafe.Slice((*byte)(old), min(oldSize, newSize)))
	}
	return p
}

// The WASI preview 1 adapter (which the runtime links in to make a component of
// this module) allocates its own state once per instance, on its first WASI call,
// through `cabi_realloc_adapter` when the module exports it, else through
// `cabi_realloc`. The call arena above is reused after every call, so the
// adapter gets a region of its own that is never released; without it, a later
// call's arguments overwrite the adapter's state and it traps ("unreachable").
var (
	adapterArena [AdapterArenaSize]byte
	adapterUsed  uintptr
)

// AdapterArenaSize bounds the WASI adapter's state.
const AdapterArenaSize = 1 << 20

//go:wasmexport cabi_realloc_adapter
func cabiReallocAdapter(old unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	if align == 0 {
		align = 1
	}
	start := (adapterUsed + uintptr(align) - 1) &^ (uintptr(align) - 1)
	if start+uintptr(newSize) > AdapterArenaSize {
		panic("sluice: the WASI adapter's state exceeds sluice.AdapterArenaSize")
	}
	adapterUsed = start + uintptr(newSize)
	p := unsafe.Pointer(&adapterArena[start])
	if old != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), newSize), unsafe.Slice((*byte)(old), min(oldSize, newSize)))
	}
	return p
}

func mem(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

func copied(ptr, n uint32) []byte { return append([]byte(nil), mem(ptr, n)...) }

func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0])))
}

// hold copies b into Go memory kept alive until post-return, and gives (ptr, len).
func hold(b []byte) (uint32, uint32) {
	if len(b) == 0 {
		return 0, 0
	}
	c := append([]byte(nil), b...)
	keep = append(keep, c)
	return addr(c), uint32(len(c))
}

// aligned gives n zeroed bytes at an 8-byte aligned address, also when n is 0:
// the canonical ABI checks list pointers' alignment, and Go's allocator packs
// small byte slices at any address.
func aligned(n int) []byte {
	words := make([]uint64, n/8+1)
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n)
}

func retAddr() uint32 { return uint32(uintptr(unsafe.Pointer(&ret[0]))) }

func release() {
	keep = keep[:0]
	used = 0
}

var le = binary.LittleEndian

// ---- exports ----

//go:wasmexport init
func exportInit(ptr, n uint32) uint32 {
	raw := mem(ptr, n*16)
	config := make([][2]string, n)
	for i := uint32(0); i < n; i++ {
		e := raw[i*16:]
		config[i][0] = string(mem(le.Uint32(e[0:]), le.Uint32(e[4:])))
		config[i][1] = string(mem(le.Uint32(e[8:]), le.Uint32(e[12:])))
	}
	ret = [16]byte{}
	if Init != nil {
		if err := Init(config); err != nil {
			p, l := hold([]byte(err.Error()))
			ret[0] = 1
			le.PutUint32(ret[4:], p)
			le.PutUint32(ret[8:], l)
		}
	}
	return retAddr()
}

//go:wasmexport cabi_post_init
func postInit(uint32) { release() }

//go:wasmexport handle
func exportHandle(topicPtr, topicLen uint32, hasKey int32, keyPtr, keyLen, payloadPtr, payloadLen,
	headersPtr, headersLen uint32, hasTs int32, ts int64, attempt uint32) uint32 {
	msg := Message{
		Topic:   string(mem(topicPtr, topicLen)),
		Payload: copied(payloadPtr, payloadLen),
		Attempt: attempt,
	}
	if hasKey != 0 {
		msg.Key = copied(keyPtr, keyLen)
	}
	if hasTs != 0 {
		t := uint64(ts)
		msg.TimestampMs = &t
	}
	hs := mem(headersPtr, headersLen*16)
	for i := uint32(0); i < headersLen; i++ {
		e := hs[i*16:]
		msg.Headers = append(msg.Headers, Header{
			Key:   string(mem(le.Uint32(e[0:]), le.Uint32(e[4:]))),
			Value: copied(le.Uint32(e[8:]), le.Uint32(e[12:])),
		})
	}
	ret = [16]byte{}
	outs, herr := Handle(msg)
	if herr != nil {
		p, l := hold([]byte(herr.Message))
		ret[0] = 1
		if herr.Retriable {
			ret[4] = 0
		} else {
			ret[4] = 1
		}
		le.PutUint32(ret[8:], p)
		le.PutUint32(ret[12:], l)
		return retAddr()
	}
	list := aligned(52 * len(outs))
	keep = append(keep, list)
	for i, o := range outs {
		r := list[52*i:]
		opt := func(at int, present bool, b []byte) {
			if present {
				r[at] = 1
				p, l := hold(b)
				le.PutUint32(r[at+4:], p)
				le.PutUint32(r[at+8:], l)
			}
		}
		opt(0, o.Sink != nil, []byte(deref(o.Sink)))
		opt(12, o.Topic != nil, []byte(deref(o.Topic)))
		opt(24, o.Key != nil, o.Key)
		p, l := hold(o.Payload)
		le.PutUint32(r[36:], p)
		le.PutUint32(r[40:], l)
		if len(o.Headers) > 0 {
			h := aligned(16 * len(o.Headers))
			keep = append(keep, h)
			for j, hd := range o.Headers {
				kp, kl := hold([]byte(hd.Key))
				vp, vl := hold(hd.Value)
				le.PutUint32(h[16*j:], kp)
				le.PutUint32(h[16*j+4:], kl)
				le.PutUint32(h[16*j+8:], vp)
				le.PutUint32(h[16*j+12:], vl)
			}
			le.PutUint32(r[44:], addr(h))
			le.PutUint32(r[48:], uint32(len(o.Headers)))
		}
	}
	le.PutUint32(ret[4:], addr(list))
	le.PutUint32(ret[8:], uint32(len(outs)))
	return retAddr()
}

//go:wasmexport cabi_post_handle
func postHandle(uint32) { release() }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ---- host imports ----

// Level of a log line.
type Level int32

const (
	Trace Level = iota
	Debug
	Info
	Warn
	Error
)

//go:wasmimport sluice:handler/host@0.1.0 log
func hostLog(level int32, ptr, n uint32)

// Log writes a line to the runtime's log.
func Log(level Level, msg string) {
	b := []byte(msg)
	hostLog(int32(level), addr(b), uint32(len(b)))
}
