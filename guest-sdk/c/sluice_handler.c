/*
 * The canonical-ABI glue of the `sluice:handler@0.1.0` world `batch-handler`, written by
 * hand (no wit-bindgen needed): the exports `init`, `handle`, `handle-batch`, their
 * `cabi_post_*`, `cabi_realloc`, and the imports of `sluice:handler/host@0.1.0` and
 * `sluice:handler/columns@0.1.0`. Layouts follow the component model's
 * canonical ABI for wasm32 (pointers and lengths are 32-bit; a record is aligned to its
 * widest field: 4 for most here, 8 for `message`, whose timestamp is a u64).
 */
#include "sluice_handler.h"

#include <stdlib.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define HOST_IMPORT(name) \
    __attribute__((import_module("sluice:handler/host@0.1.0"), import_name(name)))

/* ---- memory ---- */

EXPORT("cabi_realloc")
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    (void)align; /* malloc aligns to 16, more than any type of this world needs */
    if (new_size == 0) return (void *)align;
    void *p = realloc(old, new_size);
    if (!p) __builtin_trap();
    return p;
}

/* Frees a string or list the host allocated through cabi_realloc: `len` bytes or elements
 * at `ptr`. An empty one was never allocated (cabi_realloc answers a size of 0 with the
 * alignment, not a heap pointer), so there is nothing to free. */
static void free_arg(const void *ptr, size_t len) {
    if (len) free((void *)ptr);
}

/* Allocations handed to the host, freed in the post-return functions. */
static void **owned;
static size_t owned_len, owned_cap;

static void *own(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) __builtin_trap();
    if (owned_len == owned_cap) {
        owned_cap = owned_cap ? owned_cap * 2 : 16;
        owned = realloc(owned, owned_cap * sizeof(void *));
        if (!owned) __builtin_trap();
    }
    owned[owned_len++] = p;
    return p;
}

static void free_owned(void) {
    for (size_t i = 0; i < owned_len; i++) free(owned[i]);
    owned_len = 0;
}

static sluice_bytes copy(const void *p, size_t len) {
    uint8_t *d = own(len);
    if (len) memcpy(d, p, len);
    return (sluice_bytes){d, len};
}

/* ---- canonical ABI layouts ---- */

typedef struct {
    uint32_t ptr, len;
} abi_list; /* list<T> and string */

typedef struct {
    uint8_t is_some;
    abi_list v;
} abi_opt_list; /* option<string>, option<list<u8>>: 12 bytes */

typedef struct {
    abi_list key;
    abi_list value;
} abi_pair; /* header, tuple<string, string>: 16 bytes */

typedef struct {
    abi_opt_list sink, topic, key;
    abi_list payload;
    abi_list headers;
} abi_output; /* 52 bytes */

_Static_assert(sizeof(abi_opt_list) == 12, "option<list> is 12 bytes");
_Static_assert(sizeof(abi_output) == 52, "output is 52 bytes");

static abi_list to_abi(sluice_bytes b) {
    return (abi_list){(uint32_t)(uintptr_t)b.ptr, (uint32_t)b.len};
}

static sluice_bytes from_abi(uint32_t ptr, uint32_t len) {
    return (sluice_bytes){(const uint8_t *)(uintptr_t)ptr, len};
}

/* ---- outputs and errors ---- */

struct sluice_output {
    abi_output abi;
    abi_pair *headers;
    size_t headers_len, headers_cap;
};

static sluice_output **outs;
static size_t outs_len, outs_cap;
static sluice_bytes error_msg;

sluice_output *sluice_emit(const void *payload, size_t len) {
    if (outs_len == outs_cap) {
        size_t cap = outs_cap ? outs_cap * 2 : 4;
        sluice_output **n = realloc(outs, cap * sizeof(*n));
        if (!n) return NULL;
        outs = n;
        outs_cap = cap;
    }
    sluice_output *o = own(sizeof(*o));
    memset(o, 0, sizeof(*o));
    o->abi.payload = to_abi(copy(payload, len));
    outs[outs_len++] = o;
    return o;
}

static void set_opt(abi_opt_list *slot, const void *p, size_t len) {
    slot->is_some = 1;
    slot->v = to_abi(copy(p, len));
}

void sluice_output_key(sluice_output *o, const void *key, size_t len) { set_opt(&o->abi.key, key, len); }
void sluice_output_topic(sluice_output *o, const char *t, size_t len) { set_opt(&o->abi.topic, t, len); }
void sluice_output_sink(sluice_output *o, const char *s, size_t len) { set_opt(&o->abi.sink, s, len); }

void sluice_output_header(sluice_output *o, const char *key, size_t key_len, const void *value,
                          size_t value_len) {
    if (o->headers_len == o->headers_cap) {
        size_t cap = o->headers_cap ? o->headers_cap * 2 : 4;
        abi_pair *n = own(cap * sizeof(*n));
        if (o->headers_len) memcpy(n, o->headers, o->headers_len * sizeof(*n));
        o->headers = n; /* the old array stays owned until post-return: harmless */
        o->headers_cap = cap;
    }
    o->headers[o->headers_len++] =
        (abi_pair){to_abi(copy(key, key_len)), to_abi(copy(value, value_len))};
}

void sluice_set_error(const char *msg, size_t len) { error_msg = copy(msg, len); }

/* ---- host imports ---- */

HOST_IMPORT("log") extern void host_log(int32_t level, uint32_t ptr, uint32_t len);
HOST_IMPORT("kv-get") extern void host_kv_get(uint32_t ptr, uint32_t len, abi_opt_list *ret);
HOST_IMPORT("kv-set")
extern void host_kv_set(uint32_t kp, uint32_t kl, uint32_t vp, uint32_t vl, int32_t has_ttl,
                        int64_t ttl);

void sluice_log(sluice_level level, const char *msg, size_t len) {
    host_log((int32_t)level, (uint32_t)(uintptr_t)msg, (uint32_t)len);
}

bool sluice_kv_get(const char *key, size_t key_len, sluice_bytes *value) {
    abi_opt_list ret;
    host_kv_get((uint32_t)(uintptr_t)key, (uint32_t)key_len, &ret);
    if (!ret.is_some) return false;
    /* The host allocated the value with cabi_realloc (malloc): the caller frees it. An empty
     * value was not allocated: NULL, which free accepts. */
    *value = ret.v.len ? from_abi(ret.v.ptr, ret.v.len) : (sluice_bytes){0};
    return true;
}

void sluice_kv_set(const char *key, size_t key_len, const void *value, size_t value_len,
                   uint64_t ttl_ms) {
    host_kv_set((uint32_t)(uintptr_t)key, (uint32_t)key_len, (uint32_t)(uintptr_t)value,
                (uint32_t)value_len, ttl_ms != 0, (int64_t)ttl_ms);
}

/* ---- exports ---- */

/* result<_, string>: discriminant at 0, the string at 4. */
static struct {
    uint8_t is_err;
    abi_list err;
} init_ret;

EXPORT("init")
void *export_init(uint32_t ptr, uint32_t len) {
    abi_pair *pairs = (abi_pair *)(uintptr_t)ptr;
    sluice_config_entry *cfg = malloc((len ? len : 1) * sizeof(*cfg));
    if (!cfg) __builtin_trap();
    for (uint32_t i = 0; i < len; i++) {
        cfg[i].key = from_abi(pairs[i].key.ptr, pairs[i].key.len);
        cfg[i].value = from_abi(pairs[i].value.ptr, pairs[i].value.len);
    }
    error_msg = (sluice_bytes){0};
    bool ok = sluice_init(cfg, len);
    for (uint32_t i = 0; i < len; i++) {
        free_arg(cfg[i].key.ptr, cfg[i].key.len);
        free_arg(cfg[i].value.ptr, cfg[i].value.len);
    }
    free(cfg);
    free_arg(pairs, len);
    init_ret.is_err = !ok;
    init_ret.err = ok ? (abi_list){0} : to_abi(error_msg);
    return &init_ret;
}

EXPORT("cabi_post_init")
void post_init(void *ret) {
    (void)ret;
    free_owned();
}

/* A message as the canonical ABI lays it out for `handle` (flattened into its parameters):
 * record alignment 8 (the u64 of option<u64>), 64 bytes. */
typedef struct {
    abi_list topic;      /* 0 */
    abi_opt_list key;    /* 8 */
    abi_list payload;    /* 20 */
    abi_list headers;    /* 28 */
    struct {
        uint8_t is_some; /* 40 */
        uint64_t v;      /* 48 */
    } timestamp_ms;
    uint32_t attempt;    /* 56 */
} abi_message;

_Static_assert(sizeof(abi_message) == 64, "message is 64 bytes");
_Static_assert(__builtin_offsetof(abi_message, payload) == 20, "payload at 20");
_Static_assert(__builtin_offsetof(abi_message, timestamp_ms) == 40, "timestamp at 40");
_Static_assert(__builtin_offsetof(abi_message, attempt) == 56, "attempt at 56");

/* result<list<output>, handler-error>: discriminant at 0; ok: the list at 4;
 * err: the variant's discriminant at 4 and its string at 8. */
static struct {
    uint8_t is_err;
    union {
        abi_list ok;
        struct {
            uint8_t tag;
            abi_list msg;
        } err;
    } u;
} handle_ret;

/* Runs sluice_handle on one message, frees the message (the host allocated it through
 * cabi_realloc: ours to free), and lays the result out in handle_ret. The outputs it points
 * to stay owned until free_owned. */
static void run_handle(const abi_message *m) {
    abi_pair *hs = (abi_pair *)(uintptr_t)m->headers.ptr;
    uint32_t headers_len = m->headers.len;
    sluice_header *headers = malloc((headers_len ? headers_len : 1) * sizeof(*headers));
    if (!headers) __builtin_trap();
    for (uint32_t i = 0; i < headers_len; i++) {
        headers[i].key = from_abi(hs[i].key.ptr, hs[i].key.len);
        headers[i].value = from_abi(hs[i].value.ptr, hs[i].value.len);
    }
    bool has_key = m->key.is_some != 0;
    sluice_message msg = {
        .topic = from_abi(m->topic.ptr, m->topic.len),
        .has_key = has_key,
        .key = has_key ? from_abi(m->key.v.ptr, m->key.v.len) : (sluice_bytes){0},
        .payload = from_abi(m->payload.ptr, m->payload.len),
        .headers = headers,
        .headers_len = headers_len,
        .has_timestamp = m->timestamp_ms.is_some != 0,
        .timestamp_ms = m->timestamp_ms.v,
        .attempt = m->attempt,
    };
    outs_len = 0;
    error_msg = (sluice_bytes){0};
    sluice_status st = sluice_handle(&msg);

    for (uint32_t i = 0; i < headers_len; i++) {
        free_arg(headers[i].key.ptr, headers[i].key.len);
        free_arg(headers[i].value.ptr, headers[i].value.len);
    }
    free(headers);
    free_arg(hs, headers_len);
    free_arg(msg.topic.ptr, msg.topic.len);
    if (has_key) free_arg(msg.key.ptr, msg.key.len);
    free_arg(msg.payload.ptr, msg.payload.len);

    if (st == SLUICE_OK) {
        abi_output *list = own((outs_len ? outs_len : 1) * sizeof(abi_output));
        for (size_t i = 0; i < outs_len; i++) {
            outs[i]->abi.headers =
                (abi_list){(uint32_t)(uintptr_t)outs[i]->headers, (uint32_t)outs[i]->headers_len};
            list[i] = outs[i]->abi;
        }
        handle_ret.is_err = 0;
        handle_ret.u.ok = (abi_list){(uint32_t)(uintptr_t)list, (uint32_t)outs_len};
    } else {
        handle_ret.is_err = 1;
        handle_ret.u.err.tag = st == SLUICE_RETRIABLE ? 0 : 1;
        handle_ret.u.err.msg = to_abi(error_msg);
    }
    outs_len = 0;
}

EXPORT("handle")
void *export_handle(uint32_t topic_ptr, uint32_t topic_len, int32_t has_key, uint32_t key_ptr,
                    uint32_t key_len, uint32_t payload_ptr, uint32_t payload_len,
                    uint32_t headers_ptr, uint32_t headers_len, int32_t has_ts, int64_t ts,
                    int32_t attempt) {
    abi_message m = {
        .topic = {topic_ptr, topic_len},
        .key = {(uint8_t)(has_key != 0), {key_ptr, key_len}},
        .payload = {payload_ptr, payload_len},
        .headers = {headers_ptr, headers_len},
        .timestamp_ms = {(uint8_t)(has_ts != 0), (uint64_t)ts},
        .attempt = (uint32_t)attempt,
    };
    run_handle(&m);
    return &handle_ret;
}

/* ---- several messages per call: `handle-batch` and `columns.answer` ---- */

/* A growable buffer, kept from message to message and batch to batch. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buffer;

static void put(buffer *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + len) cap *= 2;
        uint8_t *n = realloc(b->p, cap);
        if (!n) __builtin_trap();
        b->p = n;
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void put_u32(buffer *b, uint32_t v) { put(b, &v, sizeof v); }

/* One answer as columns (see `columns.answer` in handler.wit). */
static buffer ans_bytes, ans_layout;
/* The headers of the message being handled. */
static buffer msg_headers;

/* Appends a field of an output to the answer and ends it. */
static void put_field(const abi_list *f) {
    put(&ans_bytes, (const void *)(uintptr_t)f->ptr, f->len);
    put_u32(&ans_layout, (uint32_t)ans_bytes.len);
}

/* The emitted outputs as answer columns. */
static void write_answer(void) {
    ans_bytes.len = ans_layout.len = 0;
    static const abi_list none = {0, 0};
    for (size_t i = 0; i < outs_len; i++) {
        const sluice_output *o = outs[i];
        uint32_t shape = (uint32_t)o->headers_len << 3;
        shape |= (uint32_t)o->abi.sink.is_some | (uint32_t)o->abi.topic.is_some << 1 |
                 (uint32_t)o->abi.key.is_some << 2;
        put_u32(&ans_layout, shape);
        put_field(o->abi.sink.is_some ? &o->abi.sink.v : &none);
        put_field(o->abi.topic.is_some ? &o->abi.topic.v : &none);
        put_field(o->abi.key.is_some ? &o->abi.key.v : &none);
        put_field(&o->abi.payload);
        for (size_t h = 0; h < o->headers_len; h++) {
            put_field(&o->headers[h].key);
            put_field(&o->headers[h].value);
        }
    }
}

/* `sluice:handler/columns@0.1.0`.`answer`: message `position`'s status (0 ok, 1 retriable,
 * 2 fatal), then two lists as (pointer, length): bytes and layout. The host reads them
 * before returning. */
__attribute__((import_module("sluice:handler/columns@0.1.0"), import_name("answer")))
extern void host_answer(int32_t position, int32_t status, uint32_t bytes, uint32_t bytes_len,
                        uint32_t layout, uint32_t layout_len);

/* Reads the batch's fields in order (the host's columns: see `columns.batch`). */
typedef struct {
    const uint8_t *bytes;
    size_t bytes_len;
    const uint32_t *ends;
    size_t ends_len, next;
    uint32_t start;
} reader;

static sluice_bytes next_field(reader *r) {
    if (r->next >= r->ends_len) __builtin_trap(); /* malformed: fewer ends than fields */
    uint32_t end = r->ends[r->next++];
    if (end < r->start || end > r->bytes_len) __builtin_trap();
    sluice_bytes f = {r->bytes + r->start, end - r->start};
    r->start = end;
    return f;
}

/* Several messages per call (world `batch-handler`): each message in turn, read in place
 * from the batch's columns, through sluice_handle; its answer reported through `answer`
 * before the next one starts (the host re-arms fuel and the deadline there, so each message
 * keeps its own budgets). */
EXPORT("handle-batch")
void export_handle_batch(uint32_t bytes, uint32_t bytes_len, uint32_t ends, uint32_t ends_len,
                         uint32_t shapes, uint32_t shapes_len, uint32_t ts, uint32_t ts_len,
                         uint32_t attempts, uint32_t attempts_len) {
    reader r = {(const uint8_t *)(uintptr_t)bytes, bytes_len,
                (const uint32_t *)(uintptr_t)ends, ends_len, 0, 0};
    const uint32_t *shape = (const uint32_t *)(uintptr_t)shapes;
    const uint64_t *stamp = (const uint64_t *)(uintptr_t)ts;
    const uint32_t *attempt = (const uint32_t *)(uintptr_t)attempts;
    for (uint32_t i = 0; i < shapes_len; i++) {
        sluice_message msg = {0};
        msg.topic = next_field(&r);
        msg.has_key = (shape[i] & 1) != 0;
        msg.key = next_field(&r);
        msg.payload = next_field(&r);
        msg.headers_len = shape[i] >> 2;
        msg_headers.len = 0;
        for (size_t h = 0; h < msg.headers_len; h++) {
            sluice_header hd;
            hd.key = next_field(&r);
            hd.value = next_field(&r);
            put(&msg_headers, &hd, sizeof hd);
        }
        msg.headers = (const sluice_header *)msg_headers.p;
        msg.has_timestamp = (shape[i] & 2) != 0 && i < ts_len;
        msg.timestamp_ms = i < ts_len ? stamp[i] : 0;
        msg.attempt = i < attempts_len ? attempt[i] : 1;

        outs_len = 0;
        error_msg = (sluice_bytes){0};
        sluice_status st = sluice_handle(&msg);
        if (st == SLUICE_OK) {
            write_answer();
            host_answer((int32_t)i, 0, (uint32_t)(uintptr_t)ans_bytes.p, (uint32_t)ans_bytes.len,
                        (uint32_t)(uintptr_t)ans_layout.p, (uint32_t)(ans_layout.len / 4));
        } else {
            host_answer((int32_t)i, st == SLUICE_RETRIABLE ? 1 : 2,
                        (uint32_t)(uintptr_t)error_msg.ptr, (uint32_t)error_msg.len, 0, 0);
        }
        outs_len = 0;
        free_owned();
    }
    free_arg((void *)(uintptr_t)bytes, bytes_len);
    free_arg((void *)(uintptr_t)ends, ends_len);
    free_arg((void *)(uintptr_t)shapes, shapes_len);
    free_arg((void *)(uintptr_t)ts, ts_len);
    free_arg((void *)(uintptr_t)attempts, attempts_len);
}

EXPORT("cabi_post_handle")
void post_handle(void *ret) {
    (void)ret;
    free_owned();
}
