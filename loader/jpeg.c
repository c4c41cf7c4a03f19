/* jpeg.c: JPEG decode/encode through TurboJPEG (libjpeg-turbo 2.1), and RgbImage storage.
 *
 * Parity with PIL. effdet reads images with `Image.open(path).convert('RGB')`. Pillow decodes with
 * libjpeg's defaults (islow IDCT, fancy upsampling), which are TurboJPEG's defaults too, so YCbCr,
 * RGB and grayscale JPEGs give the same bytes (gray is replicated into R=G=B by libjpeg, as
 * Pillow's L->RGB does). EXIF orientation is ignored, as Image.open ignores it.
 *
 * CMYK. A 4-component JPEG stores CMYK (or YCCK, which libjpeg turns back into CMYK) in Adobe's
 * inverted convention: Photoshop writes 255 - ink, so a stored 255 means no ink. Pillow always
 * assumes that convention (rawmode "CMYK;I" undoes the inversion), then converts CMYK->RGB with
 * R = (255 - K) - muldiv255(C, 255 - K), which on the stored values c', k' is c' * k' / 255. That
 * is libjpeg-turbo's own cmyk_to_rgb, (int)(c' * k' / 255.0 + 0.5), and the two integer results
 * agree on all 65536 (c', k') pairs (checked offline). We write Pillow's integer form; test_jpeg
 * checks it against bytes Pillow decoded. Reading the samples as plain (non-inverted) ink instead,
 * R = 255 - min(255, C + K), would turn most of these images nearly black.
 *
 * Warnings. libjpeg reports damaged data as warnings and keeps going (a truncated file decodes to
 * a gray bottom). TurboJPEG turns any warning into a -1 with TJERR_WARNING. Pillow ignores libjpeg
 * warnings but refuses truncated files ("image file is truncated"), so by default we accept
 * warnings except those meaning the data ended early; with strict=1 every warning is an error.
 * jpeg_decode_pixels says how fatal errors are told apart from warnings. */
#include "loader/jpeg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

/* A JPEG file larger than this is refused before reading it (no dataset image comes close). */
#define JPEG_MAX_FILE_BYTES ((long)1 << 30)

int rgb_image_alloc(RgbImage *img, int w, int h, Err *err)
{
    if (w <= 0 || h <= 0 || (size_t)w > SIZE_MAX / 3 / (size_t)h)
        return err_set(err, "image size %d x %d is invalid", w, h);
    if (img->px && img->w == w && img->h == h)
        return 0;
    rgb_image_free(img);
    img->px = malloc((size_t)w * (size_t)h * 3);
    if (!img->px)
        return err_set(err, "out of memory for a %d x %d image", w, h);
    img->w = w;
    img->h = h;
    return 0;
}

void rgb_image_free(RgbImage *img)
{
    if (!img)
        return;
    free(img->px);
    img->px = NULL;
    img->w = img->h = 0;
}

/* ---- decode ------------------------------------------------------------------------------------ */

/* libjpeg's JWRN_JPEG_EOF ("Premature end of JPEG file") and JWRN_HIT_MARKER ("... premature end
 * of data segment"): the data ended before the image did. */
static int tj_is_truncation(const char *msg)
{
    return strstr(msg, "remature end") != NULL;
}

static int jpeg_fail(const char *name, const char *msg, Err *err)
{
    if (tj_is_truncation(msg))
        return err_set(err, "%s: truncated JPEG (%s)", name, msg);
    return err_set(err, "%s: corrupt JPEG (%s)", name, msg);
}

/* Decodes into dst (w x h in pixel format pf). tjGetErrorCode reports TJERR_WARNING whenever any
 * warning came first, even if a fatal error followed, so the first attempt stops at the first
 * problem (STOPONWARNING): its code and message then describe that problem alone. Only a warning
 * that Pillow would ignore leads to a second, non-stopping attempt; that one starts from zeros so
 * that rows a later fatal error leaves unwritten are never stale memory. */
static int jpeg_decode_pixels(tjhandle tj, const uint8_t *buf, size_t len, uint8_t *dst, int w,
                              int h, int pf, const JpegDecodeOptions *opt, const char *name,
                              Err *err)
{
    /* LIMITSCANS refuses progressive files with absurd scan counts (a known decode-time bomb). */
    const int flags = TJFLAG_LIMITSCANS;
    if (tjDecompress2(tj, buf, (unsigned long)len, dst, w, 0, h, pf,
                      flags | TJFLAG_STOPONWARNING) == 0)
        return 0;
    const char *msg = tjGetErrorStr2(tj);
    if (tjGetErrorCode(tj) == TJERR_FATAL || opt->strict || tj_is_truncation(msg))
        return jpeg_fail(name, msg, err);
    memset(dst, 0, (size_t)w * (size_t)h * (size_t)tjPixelSize[pf]);
    if (tjDecompress2(tj, buf, (unsigned long)len, dst, w, 0, h, pf, flags) == 0 ||
        !tj_is_truncation(tjGetErrorStr2(tj)))
        return 0;
    return jpeg_fail(name, tjGetErrorStr2(tj), err);
}

/* The smallest scale 1/1, 1/2, 1/4, 1/8 that TurboJPEG offers and that keeps both minimums. */
static tjscalingfactor jpeg_pick_scale(int w, int h, int min_w, int min_h)
{
    tjscalingfactor best = {1, 1};
    if (min_w <= 0 && min_h <= 0)
        return best; /* no request: full size */
    int n = 0;
    const tjscalingfactor *sf = tjGetScalingFactors(&n);
    for (int i = 0; sf && i < n; i++) {
        int d = sf[i].denom;
        if (sf[i].num != 1 || (d != 2 && d != 4 && d != 8) || d <= best.denom)
            continue;
        if (TJSCALED(w, sf[i]) >= min_w && TJSCALED(h, sf[i]) >= min_h)
            best = sf[i];
    }
    return best;
}

/* Pillow's CMYK->RGB on Adobe-inverted samples (see the file comment), in place: pixel i is read
 * from bytes 4i.. before bytes 3i.. are written, and 3i <= 4i, so a forward pass is safe. */
static void jpeg_cmyk_to_rgb(uint8_t *px, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = px + 4 * i;
        int nk = s[3]; /* 255 - K, where K = 255 - stored */
        uint8_t rgb[3];
        for (int c = 0; c < 3; c++) {
            int tmp = (255 - s[c]) * nk + 128; /* Pillow's MULDIV255 */
            rgb[c] = (uint8_t)(nk - (((tmp >> 8) + tmp) >> 8));
        }
        memcpy(px + 3 * i, rgb, 3);
    }
}

/* Decodes a 4-component JPEG as CMYK into a scratch buffer, then converts into out. */
static int jpeg_decode_cmyk(tjhandle tj, const uint8_t *buf, size_t len,
                            const JpegDecodeOptions *opt, const char *name, RgbImage *out,
                            Err *err)
{
    size_t n = (size_t)out->w * (size_t)out->h;
    uint8_t *cmyk = malloc(n * 4);
    if (!cmyk)
        return err_set(err, "%s: out of memory decoding a %d x %d CMYK JPEG", name, out->w, out->h);
    int rc = jpeg_decode_pixels(tj, buf, len, cmyk, out->w, out->h, TJPF_CMYK, opt, name, err);
    if (rc == 0) {
        jpeg_cmyk_to_rgb(cmyk, n);
        memcpy(out->px, cmyk, n * 3);
    }
    free(cmyk);
    return rc;
}

static int jpeg_decode_with(tjhandle tj, const uint8_t *buf, size_t len, const char *name,
                            const JpegDecodeOptions *opt, RgbImage *out, Err *err)
{
    int w = 0, h = 0, subsamp = 0, cs = 0;
    /* A header warning (extraneous bytes before a marker, ...) still fills w and h; fatal errors
     * come back from the decode below, which reads the header again. */
    int rc = tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &subsamp, &cs);
    if (rc != 0 && (opt->strict || w <= 0 || h <= 0))
        return jpeg_fail(name, tjGetErrorStr2(tj), err);
    if (w <= 0 || h <= 0) /* tables only: the data ended before any frame header */
        return err_set(err, "%s: truncated JPEG (no frame header)", name);
    int64_t cap = opt->max_pixels > 0 ? opt->max_pixels : JPEG_MAX_PIXELS_DEFAULT;
    if ((int64_t)w * h > cap)
        return err_set(err, "%s: JPEG size %d x %d is out of range (at most %lld pixels)", name, w,
                       h, (long long)cap);
    tjscalingfactor sf = jpeg_pick_scale(w, h, opt->min_w, opt->min_h);
    if (rgb_image_alloc(out, TJSCALED(w, sf), TJSCALED(h, sf), err) < 0)
        return err_wrap(err, "%s: ", name);
    if (cs == TJCS_CMYK || cs == TJCS_YCCK)
        return jpeg_decode_cmyk(tj, buf, len, opt, name, out, err);
    return jpeg_decode_pixels(tj, buf, len, out->px, out->w, out->h, TJPF_RGB, opt, name, err);
}

int jpeg_decode_mem(const uint8_t *buf, size_t len, const char *name, const JpegDecodeOptions *opt,
                    RgbImage *out, Err *err)
{
    static const JpegDecodeOptions defaults = {0};
    if (!opt)
        opt = &defaults;
    if (!name)
        name = "(memory)";
    if (len < 3 || buf[0] != 0xFF || buf[1] != 0xD8 || buf[2] != 0xFF)
        return err_set(err, "%s: not a JPEG file (no SOI marker)", name);
    if (len > (size_t)JPEG_MAX_FILE_BYTES)
        return err_set(err, "%s: JPEG of %zu bytes is too large", name, len);
    tjhandle tj = tjInitDecompress();
    if (!tj)
        return err_set(err, "%s: cannot start the JPEG decoder: %s", name, tjGetErrorStr2(NULL));
    int rc = jpeg_decode_with(tj, buf, len, name, opt, out, err);
    tjDestroy(tj);
    return rc;
}

/* Reads a whole file into a malloc'ed buffer. */
static int jpeg_read_file(const char *path, uint8_t **data, size_t *len, Err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(err, "%s: %s", path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return err_set(err, "%s: cannot determine the file size", path);
    }
    if (size > JPEG_MAX_FILE_BYTES) {
        fclose(f);
        return err_set(err, "%s: file of %ld bytes is too large for a JPEG", path, size);
    }
    *data = malloc(size > 0 ? (size_t)size : 1);
    size_t got = *data ? fread(*data, 1, (size_t)size, f) : 0;
    int bad = !*data || got != (size_t)size || ferror(f);
    fclose(f);
    if (bad) {
        free(*data);
        *data = NULL;
        return err_set(err, "%s: read failed", path);
    }
    *len = (size_t)size;
    return 0;
}

int jpeg_decode_file(const char *path, const JpegDecodeOptions *opt, RgbImage *out, Err *err)
{
    uint8_t *data = NULL;
    size_t len = 0;
    if (jpeg_read_file(path, &data, &len, err) < 0)
        return -1;
    int rc = jpeg_decode_mem(data, len, path, opt, out, err);
    free(data);
    return rc;
}

/* ---- encode ------------------------------------------------------------------------------------ */

int jpeg_encode_rgb(const RgbImage *img, int quality, uint8_t **out, size_t *out_len, Err *err)
{
    *out = NULL;
    *out_len = 0;
    if (!img->px || img->w <= 0 || img->h <= 0)
        return err_set(err, "jpeg encode: empty image (%d x %d)", img->w, img->h);
    if (quality < 1 || quality > 100)
        return err_set(err, "jpeg encode: quality %d is outside 1..100", quality);
    /* tjBufSize is the worst case, so with NOREALLOC TurboJPEG writes into our malloc'ed buffer
     * and the caller frees it with free() rather than tjFree(). */
    unsigned long cap = tjBufSize(img->w, img->h, TJSAMP_444);
    if (cap == (unsigned long)-1)
        return err_set(err, "jpeg encode: image %d x %d is too large", img->w, img->h);
    unsigned char *buf = malloc(cap);
    tjhandle tj = buf ? tjInitCompress() : NULL;
    if (!tj) {
        free(buf);
        return err_set(err, "jpeg encode: cannot start the encoder (%d x %d)", img->w, img->h);
    }
    unsigned long size = cap;
    int rc = tjCompress2(tj, img->px, img->w, 0, img->h, TJPF_RGB, &buf, &size, TJSAMP_444,
                         quality, TJFLAG_NOREALLOC);
    if (rc != 0) {
        err_set(err, "jpeg encode: %s", tjGetErrorStr2(tj));
        free(buf);
    } else {
        *out = buf;
        *out_len = size;
    }
    tjDestroy(tj);
    return rc == 0 ? 0 : -1;
}

int jpeg_write_file(const char *path, const RgbImage *img, int quality, Err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (jpeg_encode_rgb(img, quality, &buf, &len, err) < 0)
        return err_wrap(err, "%s: ", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return err_set(err, "%s: %s", path, strerror(errno));
    }
    size_t put = fwrite(buf, 1, len, f);
    int closed = fclose(f);
    free(buf);
    if (put != len || closed != 0)
        return err_set(err, "%s: write failed", path);
    return 0;
}
