/*
 * Sluice guest SDK for C: a hand-written canonical-ABI glue for the `sluice:handler` world
 * (guest-sdk/wit/handler.wit). Build the handler as a core wasm module with clang for
 * wasm32-wasi (reactor); the Sluice runtime turns it into a component when it loads it.
 * See README.md in this folder.
 *
 * All byte spans are (pointer, length); strings are UTF-8 and NOT nul-terminated.
 * Everything the handler receives lives until its function returns; everything it hands to
 * the sluice_* builders is copied, so it may live on the stack.
 */
#ifndef SLUICE_HANDLER_H
#define SLUICE_HANDLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *ptr;
    size_t len;
} sluice_bytes;

typedef struct {
    sluice_bytes key; /* UTF-8 */
    sluice_bytes value;
} sluice_header;

typedef struct {
    sluice_bytes key; /* UTF-8 */
    sluice_bytes value; /* UTF-8 */
} sluice_config_entry;

typedef struct {
    sluice_bytes topic;
    bool has_key;
    sluice_bytes key;
    sluice_bytes payload;
    const sluice_header *headers;
    size_t headers_len;
    bool has_timestamp;
    uint64_t timestamp_ms;
    uint32_t attempt;
} sluice_message;

/* What `sluice_handle` returns. */
typedef enum { SLUICE_OK = 0, SLUICE_RETRIABLE = 1, SLUICE_FATAL = 2 } sluice_status;

typedef enum {
    SLUICE_TRACE = 0,
    SLUICE_DEBUG = 1,
    SLUICE_INFO = 2,
    SLUICE_WARN = 3,
    SLUICE_ERROR = 4
} sluice_level;

/* One output under construction (opaque). */
typedef struct sluice_output sluice_output;

/* ---- implemented by the handler ---- */

/* Called once per instance. Return false (after sluice_set_error) to refuse the plugin. */
bool sluice_init(const sluice_config_entry *config, size_t config_len);

/* Called once per message. Emit outputs with sluice_emit; on RETRIABLE or FATAL call
 * sluice_set_error first (outputs already emitted are dropped). */
sluice_status sluice_handle(const sluice_message *msg);

/* ---- provided by the glue ---- */

/* Adds an output with this payload (copied); NULL only when out of memory. */
sluice_output *sluice_emit(const void *payload, size_t len);
void sluice_output_key(sluice_output *o, const void *key, size_t len);
void sluice_output_topic(sluice_output *o, const char *topic, size_t len);
void sluice_output_sink(sluice_output *o, const char *sink, size_t len);
void sluice_output_header(sluice_output *o, const char *key, size_t key_len, const void *value,
                          size_t value_len);

/* The message of the error `sluice_init` or `sluice_handle` is about to return (copied). */
void sluice_set_error(const char *msg, size_t len);

/* Host functions. */
void sluice_log(sluice_level level, const char *msg, size_t len);
/* Returns true and a malloc'd copy in *value (free it; NULL for an empty value) when the key
 * is present. */
bool sluice_kv_get(const char *key, size_t key_len, sluice_bytes *value);
/* ttl_ms = 0: no time to live. */
void sluice_kv_set(const char *key, size_t key_len, const void *value, size_t value_len,
                   uint64_t ttl_ms);

#endif
