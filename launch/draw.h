/* draw.h: detections drawn onto an RgbImage, for `effdet infer --draw DIR`.
 *
 * Coordinates are image pixels, x to the right and y down, boxes as (x1, y1, x2, y2) with x2, y2
 * exclusive. Everything is clipped to the image; non-finite or inverted boxes draw nothing. */
#ifndef EFFDET_LAUNCH_DRAW_H
#define EFFDET_LAUNCH_DRAW_H

#include <stdint.h>

#include "loader/jpeg.h" /* RgbImage */

/* A 2-pixel outline in the class's colour and a label "CLASS SCORE" (e.g. "17 0.87") on a box of
 * that colour, above the box when there is room and inside its top edge otherwise, moved onto the
 * image when the box is cut by its left, top or right edge. */
void draw_detection(RgbImage *img, float x1, float y1, float x2, float y2, int class_id,
                    float score);

/* text (digits, '.', '-', ':', letters of either case, space; anything else shows as a space) in a
 * 5x7 font on a filled box of colour bg whose top-left corner is (x, y), in black or white,
 * whichever reads better on bg. Glyphs are scaled up on large images (see draw.c). */
void draw_label(RgbImage *img, int x, int y, const char *text, const uint8_t bg[3]);

/* The colour used for class_id: well-spread hues, the same on every run. */
void draw_class_color(int class_id, uint8_t rgb[3]);

#endif
