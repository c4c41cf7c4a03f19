/* ops.c: backend-neutral helpers of the op API: SAME shapes, precisions and backend selection. */
#include "kernels/ops.h"

#include <stdlib.h>
#include <string.h>

static void same_padding(int in, int k, int stride, int *out, int *pad_before)
{
    int o = (in + stride - 1) / stride;
    int total = (o - 1) * stride + k - in;
    if (total < 0) total = 0;
    *out = o;
    *pad_before = total / 2;
}

void conv_shape_same(ConvShape *s, int n, int h, int w, int cin, int cout, int k, int stride)
{
    memset(s, 0, sizeof *s);
    s->n = n, s->h = h, s->w = w, s->cin = cin, s->cout = cout;
    s->kh = k, s->kw = k, s->stride = stride;
    same_padding(h, k, stride, &s->oh, &s->pad_top);
    same_padding(w, k, stride, &s->ow, &s->pad_left);
}

void pool_shape_same(PoolShape *s, int n, int h, int w, int c, int k, int stride)
{
    memset(s, 0, sizeof *s);
    s->n = n, s->h = h, s->w = w, s->c = c;
    s->kh = k, s->kw = k, s->stride = stride;
    same_padding(h, k, stride, &s->oh, &s->pad_top);
    same_padding(w, k, stride, &s->ow, &s->pad_left);
}

int precision_parse(const char *s, Precision *p, Err *err)
{
    if (!strcmp(s, "fp16")) *p = PREC_FP16;
    else if (!strcmp(s, "bf16")) *p = PREC_BF16;
    else if (!strcmp(s, "fp32")) *p = PREC_FP32;
    else return err_set(err, "--amp-dtype %s: expected fp16, bf16 or fp32", s);
    return 0;
}

const Ops *ops_for_device(const char *device, int *device_index, Err *err)
{
    *device_index = 0;
    if (!device || !strcmp(device, "cpu")) return ops_cpu();
    if (!strncmp(device, "cuda", 4) && (device[4] == '\0' || device[4] == ':')) {
        if (device[4] == ':') {
            char *end;
            long idx = strtol(device + 5, &end, 10);
            if (end == device + 5 || *end || idx < 0 || idx > 1023)
                return err_set(err, "--device %s: expected cuda:N with N a GPU index", device), NULL;
            *device_index = (int)idx;
        }
        return ops_cuda(err);
    }
    err_set(err, "--device %s: expected cpu, cuda or cuda:N", device);
    return NULL;
}
