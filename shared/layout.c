/* layout.c: NCHW <-> NHWC copies (see layout.h). */
#include "shared/layout.h"

#include <stddef.h>

void layout_nchw_to_nhwc(float *dst, const float *src, int n, int c, int h, int w)
{
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    dst[(((size_t)b * h + y) * w + x) * c + ch] = src[(((size_t)b * c + ch) * h + y) * w + x];
}

void layout_nhwc_to_nchw(float *dst, const float *src, int n, int h, int w, int c)
{
    for (int b = 0; b < n; b++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int ch = 0; ch < c; ch++)
                    dst[(((size_t)b * c + ch) * h + y) * w + x] = src[(((size_t)b * h + y) * w + x) * c + ch];
}
