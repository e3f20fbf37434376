/* `{{name}}`: upper-cases the payload and appends a mark (config `mark`,
 * default "!"); keeps the key and adds a `handled-by` header. An empty
 * payload is `fatal`: it will never succeed, so the policy dead-letters it. */
#include <stdlib.h>
#include <string.h>

#include "sluice_handler.h"

static char mark[64] = "!";
static size_t mark_len = 1;

bool sluice_init(const sluice_config_entry *config, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (config[i].key.len == 4 && memcmp(config[i].key.ptr, "mark", 4) == 0) {
            if (config[i].value.len > sizeof mark) {
                sluice_set_error("config `mark`: longer than 64 bytes", 35);
                return false;
            }
            memcpy(mark, config[i].value.ptr, config[i].value.len);
            mark_len = config[i].value.len;
        }
    }
    return true;
}

sluice_status sluice_handle(const sluice_message *msg) {
    if (msg->payload.len == 0) {
        sluice_set_error("empty payload", 13);
        return SLUICE_FATAL;
    }
    size_t n = msg->payload.len;
    uint8_t *buf = malloc(n + mark_len);
    if (buf == NULL) {
        sluice_set_error("out of memory", 13);
        return SLUICE_RETRIABLE;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t c = msg->payload.ptr[i];
        buf[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 'a' + 'A') : c;
    }
    memcpy(buf + n, mark, mark_len);
    sluice_output *o = sluice_emit(buf, n + mark_len);
    free(buf);
    if (msg->has_key) {
        sluice_output_key(o, msg->key.ptr, msg->key.len);
    }
    sluice_output_header(o, "handled-by", 10, "{{name}}", {{name_len}});
    return SLUICE_OK;
}
