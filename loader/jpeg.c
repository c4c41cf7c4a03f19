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
#include <sys/stat.h>
#include <turbojpeg.h>

#include "shared/file_read.h"

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

/* Copies a TurboJPEG message as one line (some of its messages hold a newline). */
static void tj_message_line(char *line, size_t size, const char *msg)
{
    snprintf(line, size, "%s", msg);
    for (char *c = line; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
}

static int jpeg_fail(const char *name, const char *msg, Err *err)
{
    char line[256];
    tj_message_line(line, sizeof line, msg);
    if (tj_is_truncation(line))
        return err_set(err, "%s: truncated JPEG (%s)", name, line);
    return err_set(err, "%s: corrupt JPEG (%s)", name, line);
}

/* Whether the stream reaches its EOI marker within len bytes, walked the way libjpeg's marker
 * reader walks it: stray bytes and 0xFF fill before a marker are skipped, a segment is skipped by
 * its length, and after SOS the entropy-coded data runs to the next marker that is neither a
 * stuffed 0xFF00 nor RSTn. libjpeg reads every stream up to its EOI, so a stream without one is
 * one where it ran out of data. Only called for streams libjpeg decoded without a fatal error, so
 * the walk does not need to judge what is malformed. */
static int jpeg_reaches_eoi(const uint8_t *buf, size_t len)
{
    size_t i = 2; /* after SOI */
    for (;;) {
        while (i < len && buf[i] != 0xFF)
            i++;
        while (i < len && buf[i] == 0xFF)
            i++;
        if (i >= len)
            return 0;
        uint8_t m = buf[i++];
        if (m == 0xD9)
            return 1;
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8))
            continue; /* stuffed zero (discarded), TEM, RSTn, SOI: no length field */
        if (len - i < 2)
            return 0;
        i += (size_t)buf[i] << 8 | buf[i + 1];
        if (m != 0xDA)
            continue;
        for (;;) { /* entropy-coded data */
            while (i < len && buf[i] != 0xFF)
                i++;
            size_t j = i;
            while (j < len && buf[j] == 0xFF)
                j++;
            if (j >= len)
                return 0;
            if (buf[j] != 0x00 && (buf[j] < 0xD0 || buf[j] > 0xD7))
                break; /* a marker: i is at its 0xFF */
            i = j + 1;
        }
    }
}

/* Decodes into dst (w x h in pixel format pf). The first attempt stops at the first problem
 * (STOPONWARNING), so its code and message describe that problem alone: fatal, truncation, or a
 * warning that strict mode refuses. Only a warning that Pillow would ignore leads to a second,
 * non-stopping attempt, which starts from zeros so that no row is stale memory. TurboJPEG tells
 * that attempt's outcome poorly: it reports TJERR_WARNING whenever a warning came first, and its
 * message keeps the first warning's text unless a fatal error overwrote it (libjpeg prints only
 * the first warning of a decode, and every fatal error). So a changed message means a fatal error
 * came later (an error, as in Pillow), and a truncation hidden behind the first warning is found
 * by jpeg_reaches_eoi. A "premature end of data segment" behind another warning goes unseen and
 * the image is accepted, as Pillow accepts it. */
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
    char first[256];
    tj_message_line(first, sizeof first, msg);
    memset(dst, 0, (size_t)w * (size_t)h * (size_t)tjPixelSize[pf]);
    if (tjDecompress2(tj, buf, (unsigned long)len, dst, w, 0, h, pf, flags) == 0)
        return 0;
    char again[256];
    tj_message_line(again, sizeof again, tjGetErrorStr2(tj));
    if (strcmp(again, first) != 0)
        return jpeg_fail(name, again, err);
    if (!jpeg_reaches_eoi(buf, len))
        return err_set(err, "%s: truncated JPEG (the data ends before the EOI marker; first: %s)",
                       name, first);
    return 0;
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

/* Checks what can be checked before starting the decoder: some bytes, the SOI marker, the size. */
static int jpeg_check_start(const uint8_t *buf, size_t len, const char *name, Err *err)
{
    if (len == 0)
        return err_set(err, "%s: empty file (0 bytes), not a JPEG", name);
    if (len < 3 || buf[0] != 0xFF || buf[1] != 0xD8 || buf[2] != 0xFF)
        return err_set(err, "%s: not a JPEG file (no SOI marker)", name);
    if (len > (size_t)JPEG_MAX_FILE_BYTES)
        return err_set(err, "%s: JPEG of %zu bytes is too large", name, len);
    return 0;
}

/* Reads the frame header (size and colour space) and applies the pixel cap, so that a forged size
 * is refused here, before any pixel memory exists. */
static int jpeg_read_frame(tjhandle tj, const uint8_t *buf, size_t len, const char *name,
                           int strict, int64_t max_pixels, int *w, int *h, int *cs, Err *err)
{
    int subsamp = 0;
    *w = *h = *cs = 0;
    /* A header warning (extraneous bytes before a marker, ...) still fills w and h; fatal errors
     * leave them 0. */
    int rc = tjDecompressHeader3(tj, buf, (unsigned long)len, w, h, &subsamp, cs);
    if (rc != 0 && (strict || *w <= 0 || *h <= 0))
        return jpeg_fail(name, tjGetErrorStr2(tj), err);
    if (*w <= 0 || *h <= 0) /* tables only: the data ended before any frame header */
        return err_set(err, "%s: truncated JPEG (no frame header)", name);
    int64_t cap = max_pixels > 0 ? max_pixels : JPEG_MAX_PIXELS_DEFAULT;
    if ((int64_t)*w * *h > cap)
        return err_set(err, "%s: JPEG size %d x %d is out of range (at most %lld pixels)", name,
                       *w, *h, (long long)cap);
    return 0;
}

static int jpeg_decode_with(tjhandle tj, const uint8_t *buf, size_t len, const char *name,
                            const JpegDecodeOptions *opt, RgbImage *out, Err *err)
{
    int w, h, cs;
    if (jpeg_read_frame(tj, buf, len, name, opt->strict, opt->max_pixels, &w, &h, &cs, err) < 0)
        return -1;
    if ((opt->max_w > 0 && w > opt->max_w) || (opt->max_h > 0 && h > opt->max_h))
        return err_set(err, "%s: the JPEG is %d x %d, larger than the %d x %d expected", name, w,
                       h, opt->max_w, opt->max_h);
    tjscalingfactor sf = jpeg_pick_scale(w, h, opt->min_w, opt->min_h);
    if (rgb_image_alloc(out, TJSCALED(w, sf), TJSCALED(h, sf), err) < 0)
        return err_wrap(err, "%s: ", name);
    /* The decode reads the header again and, given the scaled size, picks the same factor. */
    if (cs == TJCS_CMYK || cs == TJCS_YCCK)
        return jpeg_decode_cmyk(tj, buf, len, opt, name, out, err);
    return jpeg_decode_pixels(tj, buf, len, out->px, out->w, out->h, TJPF_RGB, opt, name, err);
}

/* A decompressor for buf once it looks like a JPEG; NULL with err set otherwise. */
static tjhandle jpeg_start(const uint8_t *buf, size_t len, const char *name, Err *err)
{
    if (jpeg_check_start(buf, len, name, err) < 0)
        return NULL;
    tjhandle tj = tjInitDecompress();
    if (!tj)
        err_set(err, "%s: cannot start the JPEG decoder: %s", name, tjGetErrorStr2(NULL));
    return tj;
}

int jpeg_decode_mem(const uint8_t *buf, size_t len, const char *name, const JpegDecodeOptions *opt,
                    RgbImage *out, Err *err)
{
    static const JpegDecodeOptions defaults = {0};
    if (!opt)
        opt = &defaults;
    if (!name)
        name = "(memory)";
    tjhandle tj = jpeg_start(buf, len, name, err);
    if (!tj)
        return -1;
    int rc = jpeg_decode_with(tj, buf, len, name, opt, out, err);
    tjDestroy(tj);
    return rc;
}

int jpeg_read_header_mem(const uint8_t *buf, size_t len, const char *name, int *w, int *h,
                         Err *err)
{
    *w = *h = 0;
    if (!name)
        name = "(memory)";
    tjhandle tj = jpeg_start(buf, len, name, err);
    if (!tj)
        return -1;
    int cs, fw, fh;
    int rc = jpeg_read_frame(tj, buf, len, name, 0, JPEG_MAX_PIXELS_DEFAULT, &fw, &fh, &cs, err);
    tjDestroy(tj);
    if (rc == 0) {
        *w = fw;
        *h = fh;
    }
    return rc;
}

/* Reads a whole regular file. The path is checked with stat before it is opened: opening a FIFO
 * would block, and a directory or device is no image. */
static int jpeg_read_file(const char *path, uint8_t **data, size_t *len, Err *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, "%s: %s, not a JPEG file", path,
                       S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    if (st.st_size > JPEG_MAX_FILE_BYTES)
        return err_set(err, "%s: file of %lld bytes is too large for a JPEG", path,
                       (long long)st.st_size);
    return file_read_all(path, (size_t)JPEG_MAX_FILE_BYTES, (char **)data, len, err);
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
