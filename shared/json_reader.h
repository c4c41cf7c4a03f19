/* json_reader.h: a small JSON pull parser over text held in memory.
 *
 * The caller walks the document and asks for what it wants: json_object_next hands out one key
 * at a time, json_list_next one element at a time, json_read_double / json_read_int64 read a
 * number, json_string_span + json_string_decode a string, and json_skip_value checks the syntax
 * of anything else and moves past it without building a node. Nothing is allocated, so a file of
 * any size costs only its own bytes (shared/coco.c reads a 450 MB COCO file this way; cJSON's DOM
 * took ten times the memory, see docs/evaluator.md).
 *
 * Dialect: Python's json module, which pycocotools uses: strict JSON plus the NaN, Infinity and
 * -Infinity literals, case-sensitive keys, no trailing commas, no control characters inside
 * strings, nothing but whitespace after the top-level value. Numbers are rounded as Python's
 * float() rounds them. Keys longer than JSON_KEY_CAP - 1 bytes are handed out as "" (no key a
 * reader looks for is that long); a caller that wants "the last repeated key wins" gets it by
 * overwriting what it read before.
 *
 * Errors: every function that can fail returns -1 after filling r->err with one line,
 * "NAME:LINE:COLUMN: [WHAT INDEX: ]message", where WHAT and INDEX are the record being read
 * (r->what, r->index, set by the caller; NULL for none). Functions that return a count or a flag
 * use 1/0 for "more"/"done" and -1 for an error.
 *
 * Use: JsonReader r = {.s = text, .n = len, .name = "dets.json", .err = &err}; then the calls
 * below; json_expect_end at the end. */
#ifndef EFFDET_JSON_READER_H
#define EFFDET_JSON_READER_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

enum {
    JSON_MAX_DEPTH = 512, /* deeper nesting is an error, so skipping cannot overflow the stack */
    JSON_KEY_CAP = 32,    /* longer keys are never ones we look for, so they are not kept */
};

typedef struct JsonReader {
    const char *s;     /* (n) the text, not NUL-terminated */
    size_t n, pos;
    const char *name;  /* file name for messages */
    const char *what;  /* record being read ("annotation"), or NULL */
    size_t index;      /* its index in its list */
    Err *err;
} JsonReader;

/* Moves past whitespace. Inline because it runs before every token. */
static inline void json_ws(JsonReader *r)
{
    while (r->pos < r->n) {
        char c = r->s[r->pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        r->pos++;
    }
}

/* The next significant byte (after whitespace), or -1 at the end of the text. */
static inline int json_peek(JsonReader *r)
{
    json_ws(r);
    return r->pos < r->n ? (unsigned char)r->s[r->pos] : -1;
}

/* Fills err with "name:line:col: [what index: ]message" for byte `at`; returns -1. */
int json_fail_at(const JsonReader *r, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "malformed JSON: expected X, found Y" at the current position; returns -1. */
int json_syntax(JsonReader *r, const char *expected);
/* What kind of value starts with byte c ("a string", "a list", ...; -1: "the end of the file"). */
const char *json_kind_name(int c);
/* "\"field\" must be EXPECTED, found a string" (the record itself when field is NULL); -1. */
int json_type_error(JsonReader *r, const char *field, const char *expected);
/* Whether the text at byte i starts with the literal lit. */
int json_match(const JsonReader *r, size_t i, const char *lit);

/* Before element k (0, 1, ...) of the list being read: 1 if an element follows, 0 after the
 * closing ']', -1 on a syntax error. */
int json_list_next(JsonReader *r, size_t k);
/* Before member k of the object being read: 1 with its key in key[] (decoded; "" when it is too
 * long or holds a NUL), 0 after the closing '}', -1 on a syntax error. The reader is left at the
 * member's value. */
int json_object_next(JsonReader *r, size_t k, char key[JSON_KEY_CAP]);
/* Enters the list ('[') or object ('{') at the current position, or says that field (the record
 * when NULL) is not EXPECTED. */
int json_enter(JsonReader *r, char open, const char *field, const char *expected);
/* Checks the syntax of the value at the current position and moves past it, building nothing.
 * depth is the nesting level of that value (1 inside the top-level container). */
int json_skip_value(JsonReader *r, int depth);
/* The end of the document: only whitespace may remain. */
int json_expect_end(JsonReader *r);

/* Checks the string at the current position and moves past it; [*beg, *end) is its raw content
 * between the quotes, and *escaped says whether it holds a backslash. */
int json_string_span(JsonReader *r, size_t *beg, size_t *end, int *escaped);
/* Decodes the checked raw string s[beg, end) into out, which has room for end - beg bytes (no
 * escape decodes to more bytes than it takes); returns the decoded length, not NUL-terminated.
 * A surrogate pair becomes one code point, as in Python. */
size_t json_string_decode(const char *s, size_t beg, size_t end, char *out);

/* A number (NaN and the infinities included) as a double; field names it in errors. */
int json_read_double(JsonReader *r, const char *field, double *v);
/* An integer that fits in int64: an integer token, or a float with an integral value (Python's
 * 42.0 == 42). */
int json_read_int64(JsonReader *r, const char *field, int64_t *v);
/* An integer between 0 and INT32_MAX (image sizes). */
int json_read_int32(JsonReader *r, const char *field, int32_t *v);

#endif
