/* json_reader.c: the JSON pull parser (see json_reader.h).
 *
 * Why a pull parser and not cJSON: cJSON's DOM builds a node (about 80 bytes with malloc's
 * overhead) for every number, and a train2017 instances file holds about 45 million polygon
 * coordinates: on a synthetic 423 MB file, cJSON_Parse took 21.6 s and 4.6 GB of memory. Reading
 * in place and skipping what the caller does not ask for took 2.3 s and the file's own memory.
 *
 * Numbers: a token is first checked against the JSON grammar (json_number_span), then converted
 * by the cheapest exact route: integers of up to 16 characters directly, Clinger's fast path for
 * short decimals, strtod (correctly rounded, like Python's float()) for the rest. */
#include "shared/json_reader.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

typedef enum { JSON_INT, JSON_FLOAT, JSON_NAN, JSON_INF, JSON_NINF } JsonNumKind;

/* ---- the pull parser ------------------------------------------------------------------------ */

int json_fail_at(const JsonReader *r, size_t at, const char *fmt, ...)
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
        return err_set(r->err, "%s:%zu:%zu: %s %zu: %s", r->name, line, col, r->what, r->index,
                       msg);
    return err_set(r->err, "%s:%zu:%zu: %s", r->name, line, col, msg);
}

/* "malformed JSON: expected X, found Y" at the current position. */
int json_syntax(JsonReader *r, const char *expected)
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
const char *json_kind_name(int c)
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
int json_type_error(JsonReader *r, const char *field, const char *expected)
{
    int c = json_peek(r);
    if (c <= 0 || !strchr("\"{[tfn-0123456789NI", c)) return json_syntax(r, "a value");
    const char *found = json_kind_name(c);
    if (!field) return json_fail_at(r, r->pos, "must be %s, found %s", expected, found);
    return json_fail_at(r, r->pos, "\"%s\" must be %s, found %s", field, expected, found);
}

int json_match(const JsonReader *r, size_t i, const char *lit)
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
            return json_fail_at(r, (size_t)(p - s),
                                "malformed JSON: expected a digit in the exponent");
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
int json_string_span(JsonReader *r, size_t *beg, size_t *end, int *escaped)
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
size_t json_string_decode(const char *s, size_t beg, size_t end, char *out)
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
int json_list_next(JsonReader *r, size_t k)
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
int json_object_next(JsonReader *r, size_t k, char key[JSON_KEY_CAP])
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
int json_enter(JsonReader *r, char open, const char *field, const char *expected)
{
    if (json_peek(r) != open) return json_type_error(r, field, expected);
    r->pos++;
    return 0;
}

/* Checks the syntax of the value at the current position and moves past it, building nothing. */
int json_skip_value(JsonReader *r, int depth)
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

/* ---- typed values --------------------------------------------------------------------------- */

static int json_is_number_start(int c)
{
    return c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I';
}

int json_read_double(JsonReader *r, const char *field, double *v)
{
    size_t beg;
    JsonNumKind kind;
    if (!json_is_number_start(json_peek(r))) return json_type_error(r, field, "a number");
    if (json_number_span(r, &beg, &kind)) return -1;
    *v = json_number_value(r, beg, kind);
    return 0;
}

/* An id or a size: an integer token, or a float with an integral value (Python's 42.0 == 42). */
int json_read_int64(JsonReader *r, const char *field, int64_t *v)
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

int json_read_int32(JsonReader *r, const char *field, int32_t *v)
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


int json_expect_end(JsonReader *r)
{
    if (json_peek(r) >= 0) return json_syntax(r, "the end of the file after the top-level value");
    return 0;
}
