/* layout.h: conversions between PyTorch's NCHW and our NHWC, at the edges of the system (fixtures,
 * exported tensors). */
#ifndef EFFDET_LAYOUT_H
#define EFFDET_LAYOUT_H

void layout_nchw_to_nhwc(float *dst, const float *src, int n, int c, int h, int w);
void layout_nhwc_to_nchw(float *dst, const float *src, int n, int h, int w, int c);

#endif
