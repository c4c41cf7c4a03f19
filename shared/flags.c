/* flags.c: see flags.h. */
#include "shared/flags.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int flags_long(const char *s, long min, long max, long *v)
{
    char *end;
    errno = 0;
    *v = strtol(s, &end, 10);
    return end != s && !*end && !errno && *v >= min && *v <= max ? 0 : -1;
}

int flags_double(const char *s, double min, double max, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && !*end && !errno && *v >= min && *v <= max ? 0 : -1;
}

int flags_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (end == s || *end || errno || *s == '-') return -1;
    *v = x;
    return 0;
}

int flags_hw(const char *s, int *h, int *w)
{
    char *end;
    errno = 0;
    long a = strtol(s, &end, 10), b = a;
    if (end == s || errno) return -1;
    if (*end == 'x') {
        const char *t = end + 1;
        b = strtol(t, &end, 10);
        if (end == t || errno) return -1;
    }
    if (*end || a < 1 || b < 1 || a > 16384 || b > 16384) return -1;
    *h = (int)a, *w = (int)b;
    return 0;
}

int flags_usage_error(const char *prog, const char *usage, const char *what)
{
    fprintf(stderr, "%s: %s (%s)\n", prog, what, usage);
    return 2;
}
