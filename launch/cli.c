/* cli.c: shared helpers of the effdet subcommands (see cli.h). */
#include "launch/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int cli_parse_int(const char *flag, const char *s, long min, long max, long *out, Err *err)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || errno || v < min || v > max)
        return err_set(err, "%s %s: expected an integer in [%ld, %ld]", flag, s ? s : "(missing)",
                       min, max);
    *out = v;
    return 0;
}

int cli_parse_float(const char *flag, const char *s, double min, double max, double *out, Err *err)
{
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || *end || errno || !(v >= min && v <= max))
        return err_set(err, "%s %s: expected a number in [%g, %g]", flag, s ? s : "(missing)", min,
                       max);
    *out = v;
    return 0;
}

int cli_parse_hw(const char *flag, const char *s, int *h, int *w, Err *err)
{
    char *end;
    errno = 0;
    long a = s ? strtol(s, &end, 10) : 0, b;
    if (!s || end == s || errno) goto bad;
    if (*end == '\0') {
        b = a;
    } else {
        if (*end != 'x' && *end != 'X') goto bad;
        const char *rest = end + 1;
        b = strtol(rest, &end, 10);
        if (end == rest || *end || errno) goto bad;
    }
    if (a < 1 || a > 16384 || b < 1 || b > 16384) goto bad;
    *h = (int)a, *w = (int)b;
    return 0;
bad:
    return err_set(err, "%s %s: expected HxW (e.g. 512x512), each between 1 and 16384", flag,
                   s ? s : "(missing)");
}

int cli_fail(const char *cmd, const Err *err)
{
    fprintf(stderr, "effdet %s: %s\n", cmd, err->msg);
    return 1;
}

int cli_usage(const char *usage)
{
    fprintf(stderr, "usage: %s\n", usage);
    return 2;
}
