/* coco.c: readers for COCO ground truth files and COCO detection results files (see coco.h).
 *
 * Why not cJSON: its DOM builds a node (about 80 bytes with malloc's overhead) for every number,
 * and a train2017 instances file holds about 45 million polygon coordinates: on a synthetic
 * 423 MB file, cJSON_Parse took 21.6 s and 4.6 GB of memory. The reader below is a small
 * pull parser over the whole file held in memory: the COCO readers ask for the values they want
 * (ids, bbox, area, ...) and skip the others, checking their syntax without building anything.
 * It follows Python's json module, which pycocotools uses: strict JSON plus the NaN, Infinity and
 * -Infinity literals, case-sensitive keys, the last of repeated keys wins, no trailing commas,
 * no control characters inside strings, nothing but whitespace after the top-level value.
 *
 * Errors are one line, "FILE:LINE:COLUMN: [RECORD INDEX: ]what is wrong", with the record being
 * "image", "annotation", "category" or "detection" and its 0-based index in its list. */
#include "shared/coco.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/check.h"

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

typedef enum { JSON_INT, JSON_FLOAT, JSON_NAN, JSON_INF, JSON_NINF } JsonNumKind;

/* ---- the pull parser ------------------------------------------------------------------------ */

/* Fills err with "name:line:col: [what index: ]message" for byte `at`; returns -1. */
static int json_fail_at(const JsonReader *r, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int json_fail_at(const JsonReader *r, size_t at, const char *fmt, ...)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < r->n; i++) {
        if (r->s[i] == '\n') line++, col = 1;
        else col++;
    }
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->what)
        return err_set(r->err, "%s:%zu:%zu: %s %zu: %s", r->name, line, col, r->what, r->index, msg);
    return err_set(r->err, "%s:%zu:%zu: %s", r->name, line, col, msg);
}

static void json_ws(JsonReader *r)
{
    while (r->pos < r->n) {
        char c = r->s[r->pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        r->pos++;
    }
}

/* The next significant byte (after whitespace), or -1 at the end of the text. */
static int json_peek(JsonReader *r)
{
    json_ws(r);
    return r->pos < r->n ? (unsigned char)r->s[r->pos] : -1;
}

/* "malformed JSON: expected X, found Y" at the current position. */
static int json_syntax(JsonReader *r, const char *expected)
{
    int c = json_peek(r);
    if (c < 0)
        return json_fail_at(r, r->pos, "malformed JSON: expected %s, found the end of the file",
                            expected);
    if (c >= 0x20 && c < 0x7f)
        return json_fail_at(r, r->pos, "malformed JSON: expected %s, found '%c'", expected, c);
    return json_fail_at(r, r->pos, "malformed JSON: expected %s, found byte 0x%02x", expected, c);
}

/* What kind of value starts with byte c, for "must be a number, found a string". */
static const char *json_kind_name(int c)
{
    switch (c) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "a list";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    case -1: return "the end of the file";
    default: return "a number";
    }
}

/* "\"field\" must be a number, found a string" (the record itself when field is NULL). */
static int json_type_error(JsonReader *r, const char *field, const char *expected)
{
    int c = json_peek(r);
    if (c <= 0 || !strchr("\"{[tfn-0123456789NI", c)) return json_syntax(r, "a value");
    const char *found = json_kind_name(c);
    if (!field) return json_fail_at(r, r->pos, "must be %s, found %s", expected, found);
    return json_fail_at(r, r->pos, "\"%s\" must be %s, found %s", field, expected, found);
}

static int json_match(const JsonReader *r, size_t i, const char *lit)
{
    size_t len = strlen(lit);
    return r->n - i >= len && !memcmp(r->s + i, lit, len);
}

/* Checks the number at the current position and moves past it; it starts at *beg. */
static int json_number_span(JsonReader *r, size_t *beg, JsonNumKind *kind)
{
    static const struct { const char *lit; JsonNumKind kind; } specials[] = {
        {"NaN", JSON_NAN}, {"Infinity", JSON_INF}, {"-Infinity", JSON_NINF}};
    json_ws(r);
    const char *s = r->s, *p = s + r->pos, *end = s + r->n;
    *beg = r->pos;
    *kind = JSON_INT;
    if (p < end && *p == '-') p++;
    if (p == end || *p < '0' || *p > '9') {
        for (size_t k = 0; k < 3; k++) {
            if (json_match(r, r->pos, specials[k].lit)) {
                r->pos += strlen(specials[k].lit);
                *kind = specials[k].kind;
                return 0;
            }
        }
        return json_syntax(r, "a value");
    }
    if (*p++ != '0')
        while (p < end && *p >= '0' && *p <= '9') p++;
    if (p < end && *p == '.') {
        if (++p == end || *p < '0' || *p > '9')
            return json_fail_at(r, (size_t)(p - s), "malformed JSON: expected a digit after '.'");
        while (p < end && *p >= '0' && *p <= '9') p++;
        *kind = JSON_FLOAT;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-')) p++;
        if (p == end || *p < '0' || *p > '9')
            return json_fail_at(r, (size_t)(p - s), "malformed JSON: expected a digit in the exponent");
        while (p < end && *p >= '0' && *p <= '9') p++;
        *kind = JSON_FLOAT;
    }
    r->pos = (size_t)(p - s);
    return 0;
}

/* An integer token [beg, end) as int64; -1 when it does not fit. */
static int json_int_token(const char *s, size_t beg, size_t end, int64_t *v)
{
    int neg = s[beg] == '-';
    uint64_t acc = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (size_t i = beg + neg; i < end; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (acc > (limit - d) / 10) return -1;
        acc = acc * 10 + d;
    }
    *v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return 0;
}

/* Clinger's fast path for a checked number token [p, end): with at most 15 significant digits
 * and a decimal exponent within +-22, mantissa and power of ten are exact doubles, so one IEEE
 * product or quotient is correctly rounded, as strtod is. -1 when the token needs strtod. */
static int json_fast_double(const char *p, const char *end, double *v)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    int neg = *p == '-', digits = 0, frac = 0, dot = 0, e = 0, eneg = 0;
    int64_t mant = 0;
    for (p += neg; p < end && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.') {
            dot = 1;
        } else {
            frac += dot;
            if ((mant || *p != '0') && ++digits > 15) return -1;
            mant = mant * 10 + (*p - '0');
        }
    }
    if (p < end) {
        p++;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        for (; p < end && e < 1000; p++) e = e * 10 + (*p - '0');
    }
    e = (eneg ? -e : e) - frac;
    if (e < -22 || e > 22) return -1;
    double d = e < 0 ? (double)mant / pow10[-e] : (double)mant * pow10[e];
    *v = neg ? -d : d;
    return 0;
}

/* The value of a checked number token, rounded as Python's float() rounds it (strtod is
 * correctly rounded); integers of up to 15 digits are exact without it. */
static double json_number_value(const JsonReader *r, size_t beg, JsonNumKind kind)
{
    size_t len = r->pos - beg;
    int64_t iv;
    double v;
    switch (kind) {
    case JSON_NAN: return NAN;
    case JSON_INF: return INFINITY;
    case JSON_NINF: return -INFINITY;
    case JSON_INT:
        if (len <= 16 && json_int_token(r->s, beg, r->pos, &iv) == 0) return (double)iv;
        break;
    case JSON_FLOAT: break;
    }
    if (json_fast_double(r->s + beg, r->s + r->pos, &v) == 0) return v;
    char small[64];
    char *tmp = len < sizeof small ? small : malloc(len + 1);
    ASSERT(tmp);
    memcpy(tmp, r->s + beg, len);
    tmp[len] = '\0';
    v = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    return v;
}

/* Checks the string at the current position and moves past it; [*beg, *end) is its raw content
 * between the quotes, and *escaped says whether it holds a backslash. */
static int json_string_span(JsonReader *r, size_t *beg, size_t *end, int *escaped)
{
    if (json_peek(r) != '"') return json_syntax(r, "a string");
    size_t start = ++r->pos, i = start;
    const char *s = r->s;
    *escaped = 0;
    for (;;) {
        while (i < r->n && s[i] != '"' && s[i] != '\\' && (unsigned char)s[i] >= 0x20) i++;
        if (i >= r->n) return json_fail_at(r, start - 1, "malformed JSON: unterminated string");
        unsigned char c = (unsigned char)s[i];
        if (c == '"') break;
        if (c < 0x20)
            return json_fail_at(r, i, "malformed JSON: control character 0x%02x in a string", c);
        char e = i + 1 < r->n ? s[i + 1] : '\0';
        *escaped = 1;
        if (e && strchr("\"\\/bfnrt", e)) {
            i += 2;
        } else if (e == 'u') {
            for (size_t k = i + 2; k < i + 6; k++)
                if (k >= r->n || !strchr("0123456789abcdefABCDEF", s[k]) || !s[k])
                    return json_fail_at(r, i, "malformed JSON: \\u needs 4 hex digits");
            i += 6;
        } else {
            return json_fail_at(r, i, "malformed JSON: invalid escape in a string");
        }
    }
    *beg = start;
    *end = i;
    r->pos = i + 1;
    return 0;
}

static unsigned json_hex4(const char *p)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

static size_t json_put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12), out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18), out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f)), out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes the checked raw string s[beg, end) into out, which has room for end - beg bytes (no
 * escape decodes to more bytes than it takes); returns the decoded length. A surrogate pair
 * becomes one code point, as in Python. */
static size_t json_string_decode(const char *s, size_t beg, size_t end, char *out)
{
    size_t o = 0;
    for (size_t i = beg; i < end;) {
        if (s[i] != '\\') { out[o++] = s[i++]; continue; }
        char e = s[i + 1];
        if (e != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            out[o++] = to[strchr(from, e) - from];
            i += 2;
            continue;
        }
        unsigned cp = json_hex4(s + i + 2);
        i += 6;
        if (cp >= 0xd800 && cp < 0xdc00 && end - i >= 6 && s[i] == '\\' && s[i + 1] == 'u') {
            unsigned lo = json_hex4(s + i + 2);
            if (lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
        }
        o += json_put_utf8(out + o, cp);
    }
    return o;
}

/* Before element k of the list being read: 1 if an element follows, 0 after the closing ']'. */
static int json_list_next(JsonReader *r, size_t k)
{
    int c = json_peek(r);
    if (c == ']') {
        r->pos++;
        return 0;
    }
    if (k > 0) {
        if (c != ',') return json_syntax(r, "',' or ']' after a list element");
        r->pos++;
    }
    return 1;
}

/* Before member k of the object being read: 1 with its key in key[] (decoded; "" when it is too
 * long or holds a NUL, as no key we look for does), 0 after the closing '}'. */
static int json_object_next(JsonReader *r, size_t k, char key[JSON_KEY_CAP])
{
    int c = json_peek(r);
    if (c == '}') {
        r->pos++;
        return 0;
    }
    if (k > 0) {
        if (c != ',') return json_syntax(r, "',' or '}' after an object member");
        r->pos++;
    }
    size_t beg, end;
    int escaped;
    if (json_peek(r) != '"') return json_syntax(r, "a string key");
    if (json_string_span(r, &beg, &end, &escaped)) return -1;
    key[0] = '\0';
    if (end - beg < JSON_KEY_CAP && !escaped) { /* raw strings cannot hold a NUL */
        memcpy(key, r->s + beg, end - beg);
        key[end - beg] = '\0';
    } else if (end - beg < JSON_KEY_CAP) {
        size_t len = json_string_decode(r->s, beg, end, key);
        key[memchr(key, '\0', len) ? 0 : len] = '\0';
    }
    if (json_peek(r) != ':') return json_syntax(r, "':' after a key");
    r->pos++;
    return 1;
}

/* Enters the list or object at the current position, or says that field is not one. */
static int json_enter(JsonReader *r, char open, const char *field, const char *expected)
{
    if (json_peek(r) != open) return json_type_error(r, field, expected);
    r->pos++;
    return 0;
}

/* Checks the syntax of the value at the current position and moves past it, building nothing. */
static int json_skip_value(JsonReader *r, int depth)
{
    int c = json_peek(r);
    if (depth > JSON_MAX_DEPTH)
        return json_fail_at(r, r->pos, "malformed JSON: nested deeper than %d", JSON_MAX_DEPTH);
    size_t beg, end;
    JsonNumKind kind;
    char key[JSON_KEY_CAP];
    int rc, escaped;
    switch (c) {
    case '{':
        r->pos++;
        for (size_t k = 0; (rc = json_object_next(r, k, key)) > 0; k++)
            if (json_skip_value(r, depth + 1)) return -1;
        return rc;
    case '[':
        r->pos++;
        for (size_t k = 0; (rc = json_list_next(r, k)) > 0; k++)
            if (json_skip_value(r, depth + 1)) return -1;
        return rc;
    case '"': return json_string_span(r, &beg, &end, &escaped);
    case 't': case 'f': case 'n': {
        const char *lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
        if (!json_match(r, r->pos, lit)) return json_syntax(r, "a value");
        r->pos += strlen(lit);
        return 0;
    }
    default: return json_number_span(r, &beg, &kind);
    }
}

/* ---- typed fields --------------------------------------------------------------------------- */

static int json_is_number_start(int c)
{
    return c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I';
}

static int json_read_double(JsonReader *r, const char *field, double *v)
{
    size_t beg;
    JsonNumKind kind;
    if (!json_is_number_start(json_peek(r))) return json_type_error(r, field, "a number");
    if (json_number_span(r, &beg, &kind)) return -1;
    *v = json_number_value(r, beg, kind);
    return 0;
}

/* An id or a size: an integer token, or a float with an integral value (Python's 42.0 == 42). */
static int json_read_int64(JsonReader *r, const char *field, int64_t *v)
{
    size_t beg;
    JsonNumKind kind;
    if (!json_is_number_start(json_peek(r))) return json_type_error(r, field, "an integer");
    if (json_number_span(r, &beg, &kind)) return -1;
    if (kind == JSON_INT && json_int_token(r->s, beg, r->pos, v) == 0) return 0;
    double d = json_number_value(r, beg, kind);
    if (kind == JSON_INT || !(d >= -0x1p63 && d < 0x1p63) || d != floor(d))
        return json_fail_at(r, beg, "\"%s\" must be an integer that fits in 64 bits, found %.*s",
                            field, (int)(r->pos - beg < 40 ? r->pos - beg : 40), r->s + beg);
    *v = (int64_t)d;
    return 0;
}

static int json_read_int32(JsonReader *r, const char *field, int32_t *v)
{
    int64_t w;
    size_t at = (json_ws(r), r->pos);
    if (json_read_int64(r, field, &w)) return -1;
    if (w < 0 || w > INT32_MAX)
        return json_fail_at(r, at, "\"%s\" must be between 0 and %d, found %lld", field, INT32_MAX,
                            (long long)w);
    *v = (int32_t)w;
    return 0;
}

/* [x, y, w, h]: four finite numbers with w, h >= 0. */
static int json_read_bbox(JsonReader *r, double box[4])
{
    size_t at = (json_ws(r), r->pos), k = 0;
    int rc;
    if (json_enter(r, '[', "bbox", "a list of 4 numbers")) return -1;
    for (; (rc = json_list_next(r, k)) > 0; k++) {
        double v;
        if (json_read_double(r, "bbox", &v)) return -1;
        if (k < 4) box[k] = v;
    }
    if (rc < 0) return -1;
    if (k != 4) return json_fail_at(r, at, "\"bbox\" must hold 4 numbers, found %zu", k);
    for (k = 0; k < 4; k++)
        if (!isfinite(box[k]))
            return json_fail_at(r, at, "\"bbox\" holds a non-finite number (%g)", box[k]);
    if (box[2] < 0 || box[3] < 0)
        return json_fail_at(r, at, "\"bbox\" has a negative %s (%g)", box[2] < 0 ? "width" : "height",
                            box[2] < 0 ? box[2] : box[3]);
    return 0;
}

/* ---- ground truth --------------------------------------------------------------------------- */

struct CocoStrBlock {
    CocoStrBlock *next;
    size_t used, cap;
    char data[];
};

/* Room for len + 1 bytes that never moves (strings are handed out as pointers). */
static char *coco_str_alloc(CocoDataset *ds, size_t len)
{
    CocoStrBlock *b = ds->strings;
    if (!b || b->cap - b->used < len + 1) {
        size_t cap = len + 1 > 65536 ? len + 1 : 65536;
        b = malloc(sizeof *b + cap);
        ASSERT(b);
        b->next = ds->strings, b->used = 0, b->cap = cap;
        ds->strings = b;
    }
    char *p = b->data + b->used;
    b->used += len + 1;
    return p;
}

static int json_read_string(JsonReader *r, CocoDataset *ds, const char *field, const char **out)
{
    size_t beg, end;
    int escaped;
    if (json_peek(r) != '"') return json_type_error(r, field, "a string");
    if (json_string_span(r, &beg, &end, &escaped)) return -1;
    char *p = coco_str_alloc(ds, end - beg);
    p[json_string_decode(r->s, beg, end, p)] = '\0';
    *out = p;
    return 0;
}


/* ---- records -------------------------------------------------------------------------------- */

/* A record's fields, read into a struct by offset: one reader serves the four record kinds. */
typedef enum { F_ID, F_SIZE, F_NUMBER, F_SCORE, F_BBOX, F_STRING, F_CROWD } CocoFieldType;

typedef struct CocoField {
    const char *name;
    CocoFieldType type;
    size_t offset;
    int required;
} CocoField;

static const CocoField image_fields[] = {
    {"id", F_ID, offsetof(CocoImage, id), 1},
    {"width", F_SIZE, offsetof(CocoImage, width), 0},
    {"height", F_SIZE, offsetof(CocoImage, height), 0},
    {"file_name", F_STRING, offsetof(CocoImage, file_name), 0},
};
static const CocoField annotation_fields[] = {
    {"id", F_ID, offsetof(CocoAnnotation, id), 1},
    {"image_id", F_ID, offsetof(CocoAnnotation, image_id), 1},
    {"category_id", F_ID, offsetof(CocoAnnotation, category_id), 1},
    {"bbox", F_BBOX, offsetof(CocoAnnotation, bbox), 1},
    {"area", F_NUMBER, offsetof(CocoAnnotation, area), 1},
    {"iscrowd", F_CROWD, offsetof(CocoAnnotation, iscrowd), 0},
};
static const CocoField category_fields[] = {
    {"id", F_ID, offsetof(CocoCategory, id), 1},
    {"name", F_STRING, offsetof(CocoCategory, name), 0},
    {"supercategory", F_STRING, offsetof(CocoCategory, supercategory), 0},
};
static const CocoField detection_fields[] = {
    {"image_id", F_ID, offsetof(CocoDetection, image_id), 1},
    {"category_id", F_ID, offsetof(CocoDetection, category_id), 1},
    {"bbox", F_BBOX, offsetof(CocoDetection, bbox), 1},
    {"score", F_SCORE, offsetof(CocoDetection, score), 1},
};
#define COCO_NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* iscrowd: 0, 1, false or true (pycocotools treats other values inconsistently, so they are
 * errors). */
static int coco_read_crowd(JsonReader *r, int *out)
{
    size_t at = (json_ws(r), r->pos);
    double v;
    if (json_match(r, at, "true") || json_match(r, at, "false")) {
        *out = r->s[at] == 't';
        r->pos += *out ? 4 : 5;
        return 0;
    }
    if (json_read_double(r, "iscrowd", &v)) return -1;
    if (v != 0 && v != 1) return json_fail_at(r, at, "\"iscrowd\" must be 0 or 1, found %g", v);
    *out = v == 1;
    return 0;
}

static int coco_read_field(JsonReader *r, CocoDataset *ds, const CocoField *f, void *p)
{
    size_t at = (json_ws(r), r->pos);
    switch (f->type) {
    case F_ID: return json_read_int64(r, f->name, p);
    case F_SIZE: return json_read_int32(r, f->name, p);
    case F_BBOX: return json_read_bbox(r, p);
    case F_STRING: return json_read_string(r, ds, f->name, p);
    case F_CROWD: return coco_read_crowd(r, p);
    case F_NUMBER:
    case F_SCORE:
        if (json_read_double(r, f->name, p)) return -1;
        if (f->type == F_SCORE && isnan(*(double *)p))
            return json_fail_at(r, at, "\"%s\" is NaN", f->name);
        if (f->type == F_NUMBER && !isfinite(*(double *)p))
            return json_fail_at(r, at, "\"%s\" is not finite (%g)", f->name, *(double *)p);
        return 0;
    }
    return 0;
}

/* Reads the object that starts at byte `at` (its '{' already consumed) into the struct out. */
static int coco_read_object(JsonReader *r, CocoDataset *ds, const CocoField *fields, size_t nf,
                            void *out, size_t at)
{
    char key[JSON_KEY_CAP];
    unsigned seen = 0;
    int rc;
    for (size_t m = 0; (rc = json_object_next(r, m, key)) > 0; m++) {
        size_t f = 0;
        while (f < nf && strcmp(key, fields[f].name)) f++;
        if (f == nf) {
            if (json_skip_value(r, 1)) return -1;
            continue;
        }
        if (coco_read_field(r, ds, &fields[f], (char *)out + fields[f].offset)) return -1;
        seen |= 1u << f;
    }
    if (rc < 0) return -1;
    for (size_t f = 0; f < nf; f++)
        if (fields[f].required && !(seen >> f & 1))
            return json_fail_at(r, at, "missing \"%s\"", fields[f].name);
    return 0;
}

/* A list of records of one kind at the current position. A repeated key replaces the list read
 * before, as in Python. init is the value of absent optional fields. */
typedef struct CocoList {
    const char *field, *what;
    const CocoField *fields;
    size_t n_fields, elem;
    const void *init;
} CocoList;

static int coco_read_list(JsonReader *r, CocoDataset *ds, const CocoList *l, void **items,
                          size_t *n)
{
    size_t cap = 0;
    int rc;
    free(*items);
    *items = NULL, *n = 0;
    if (json_enter(r, '[', l->field, "a list")) return -1;
    for (size_t k = 0; (rc = json_list_next(r, k)) > 0; k++) {
        if (k == cap) {
            cap = cap ? cap * 2 : 256;
            *items = realloc(*items, cap * l->elem);
            ASSERT(*items);
        }
        void *item = (char *)*items + k * l->elem;
        memcpy(item, l->init, l->elem);
        r->what = l->what, r->index = k;
        size_t at = (json_ws(r), r->pos);
        if (json_enter(r, '{', NULL, "an object")) return -1;
        if (coco_read_object(r, ds, l->fields, l->n_fields, item, at)) return -1;
        *n = k + 1;
    }
    r->what = NULL;
    return rc;
}

static int json_expect_end(JsonReader *r)
{
    if (json_peek(r) >= 0) return json_syntax(r, "the end of the file after the top-level value");
    return 0;
}

/* ---- lookups -------------------------------------------------------------------------------- */

typedef struct CocoIdPos {
    int64_t id;
    uint32_t pos;
} CocoIdPos;

static int coco_cmp_id_pos(const void *a, const void *b)
{
    const CocoIdPos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* order[] = indices of the n records (stride bytes apart, the id at id_off) sorted by id; a
 * repeated id is an error naming both records (what: "images"). */
static int coco_build_order(const char *name, const char *what, const void *items, size_t id_off,
                            size_t stride, size_t n, uint32_t **order, Err *err)
{
    if (n > UINT32_MAX) return err_set(err, "%s: more than %u %s", name, UINT32_MAX, what);
    CocoIdPos *tmp = malloc((n ? n : 1) * sizeof *tmp);
    *order = malloc((n ? n : 1) * sizeof **order);
    ASSERT(tmp && *order);
    for (size_t i = 0; i < n; i++)
        tmp[i] = (CocoIdPos){*(const int64_t *)((const char *)items + i * stride + id_off),
                             (uint32_t)i};
    qsort(tmp, n, sizeof *tmp, coco_cmp_id_pos);
    for (size_t i = 0; i < n; i++) {
        (*order)[i] = tmp[i].pos;
        if (i && tmp[i].id == tmp[i - 1].id) {
            int rc = err_set(err, "%s: %s %u and %u have the same id %lld", name, what,
                             tmp[i - 1].pos, tmp[i].pos, (long long)tmp[i].id);
            free(tmp);
            return rc;
        }
    }
    free(tmp);
    return 0;
}

static int64_t coco_find(const uint32_t *order, const void *first, size_t stride, size_t n,
                         int64_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t v = *(const int64_t *)((const char *)first + order[mid] * stride);
        if (v < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n && *(const int64_t *)((const char *)first + order[lo] * stride) == id)
        return order[lo];
    return -1;
}

int64_t coco_dataset_image_index(const CocoDataset *ds, int64_t image_id)
{
    return coco_find(ds->image_order, ds->images, sizeof(CocoImage), ds->n_images, image_id);
}

int64_t coco_dataset_category_index(const CocoDataset *ds, int64_t category_id)
{
    return coco_find(ds->category_order, ds->categories, sizeof(CocoCategory), ds->n_categories,
                     category_id);
}

/* Ids are unique (pycocotools keys annotations by id, so two with one id would silently become
 * one), and every annotation names a listed image and category. */
static int coco_dataset_index(CocoDataset *ds, const char *name, Err *err)
{
    uint32_t *ann_order = NULL;
    int rc = coco_build_order(name, "annotations", ds->annotations, offsetof(CocoAnnotation, id),
                              sizeof(CocoAnnotation), ds->n_annotations, &ann_order, err);
    free(ann_order);
    if (rc ||
        coco_build_order(name, "images", ds->images, offsetof(CocoImage, id), sizeof(CocoImage),
                         ds->n_images, &ds->image_order, err) ||
        coco_build_order(name, "categories", ds->categories, offsetof(CocoCategory, id),
                         sizeof(CocoCategory), ds->n_categories, &ds->category_order, err))
        return -1;
    for (size_t i = 0; i < ds->n_annotations; i++) {
        const CocoAnnotation *a = &ds->annotations[i];
        if (coco_dataset_image_index(ds, a->image_id) < 0)
            return err_set(err, "%s: annotation %zu (id %lld): image_id %lld is not in \"images\"",
                           name, i, (long long)a->id, (long long)a->image_id);
        if (coco_dataset_category_index(ds, a->category_id) < 0)
            return err_set(err,
                           "%s: annotation %zu (id %lld): category_id %lld is not in \"categories\"",
                           name, i, (long long)a->id, (long long)a->category_id);
    }
    return 0;
}

/* ---- files ---------------------------------------------------------------------------------- */

static int coco_read_file(const char *path, char **text, size_t *len, Err *err)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0) return err_set(err, "%s: %s", path, strerror(errno));
    size_t cap = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 1 << 16;
    char *buf = malloc(cap);
    ASSERT(buf);
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            ASSERT(buf);
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return err_set(err, "%s: %s", path, strerror(e));
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    *text = buf, *len = n;
    return 0;
}

/* ---- public --------------------------------------------------------------------------------- */

int coco_dataset_parse(CocoDataset *ds, const char *text, size_t len, const char *name, Err *err)
{
    static const CocoImage image_init = {.file_name = ""};
    static const CocoAnnotation annotation_init = {0};
    static const CocoCategory category_init = {.name = "", .supercategory = ""};
    static const CocoList lists[] = {
        {"images", "image", image_fields, COCO_NFIELDS(image_fields), sizeof(CocoImage),
         &image_init},
        {"annotations", "annotation", annotation_fields, COCO_NFIELDS(annotation_fields),
         sizeof(CocoAnnotation), &annotation_init},
        {"categories", "category", category_fields, COCO_NFIELDS(category_fields),
         sizeof(CocoCategory), &category_init},
    };
    JsonReader r = {.s = text, .n = len, .name = name, .err = err};
    char key[JSON_KEY_CAP];
    unsigned seen = 0;
    int rc;
    memset(ds, 0, sizeof *ds);
    void **items[] = {(void **)&ds->images, (void **)&ds->annotations, (void **)&ds->categories};
    size_t *counts[] = {&ds->n_images, &ds->n_annotations, &ds->n_categories};
    if (json_peek(&r) != '{') {
        rc = json_fail_at(&r, r.pos, "expected a JSON object with \"images\" and \"categories\", "
                                     "found %s", json_kind_name(json_peek(&r)));
        goto fail;
    }
    r.pos++;
    for (size_t m = 0; (rc = json_object_next(&r, m, key)) > 0; m++) {
        size_t l = 0;
        while (l < 3 && strcmp(key, lists[l].field)) l++;
        rc = l < 3 ? coco_read_list(&r, ds, &lists[l], items[l], counts[l]) : json_skip_value(&r, 1);
        if (rc) goto fail;
        seen |= l < 3 ? 1u << l : 0;
    }
    if (rc < 0 || json_expect_end(&r)) goto fail;
    for (size_t l = 0; l < 3; l += 2) {
        if (!(seen >> l & 1)) {
            rc = err_set(err, "%s: the top-level object has no \"%s\" list", name, lists[l].field);
            goto fail;
        }
    }
    if (coco_dataset_index(ds, name, err) == 0) return 0;
fail:
    coco_dataset_free(ds);
    return -1;
}

int coco_dataset_load(CocoDataset *ds, const char *path, Err *err)
{
    char *text;
    size_t len;
    memset(ds, 0, sizeof *ds);
    if (coco_read_file(path, &text, &len, err)) return -1;
    int rc = coco_dataset_parse(ds, text, len, path, err);
    free(text);
    return rc;
}

void coco_dataset_free(CocoDataset *ds)
{
    free(ds->images);
    free(ds->annotations);
    free(ds->categories);
    free(ds->image_order);
    free(ds->category_order);
    for (CocoStrBlock *b = ds->strings, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    memset(ds, 0, sizeof *ds);
}

int coco_detections_parse(CocoDetections *dets, const char *text, size_t len, const char *name,
                          Err *err)
{
    static const CocoDetection init = {0};
    static const CocoList list = {"results", "detection", detection_fields,
                                  COCO_NFIELDS(detection_fields), sizeof(CocoDetection), &init};
    JsonReader r = {.s = text, .n = len, .name = name, .err = err};
    memset(dets, 0, sizeof *dets);
    if (json_peek(&r) != '[') {
        json_fail_at(&r, r.pos, "expected a list of detections, found %s",
                     json_kind_name(json_peek(&r)));
    } else if (coco_read_list(&r, NULL, &list, (void **)&dets->dets, &dets->n) == 0 &&
               json_expect_end(&r) == 0) {
        return 0;
    }
    coco_detections_free(dets);
    return -1;
}

int coco_detections_load(CocoDetections *dets, const char *path, Err *err)
{
    char *text;
    size_t len;
    memset(dets, 0, sizeof *dets);
    if (coco_read_file(path, &text, &len, err)) return -1;
    int rc = coco_detections_parse(dets, text, len, path, err);
    free(text);
    return rc;
}

void coco_detections_free(CocoDetections *dets)
{
    free(dets->dets);
    memset(dets, 0, sizeof *dets);
}
