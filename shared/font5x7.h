/* font5x7.h: a 5x7 dot-matrix font (the classic HD44780-style character set) for the few labels
 * effdet draws: box labels on images (launch/draw.c) and the axes of curves.png
 * (coordinator/curves_png.c). Letters have one form, drawn as capitals. */
#ifndef EFFDET_FONT5X7_H
#define EFFDET_FONT5X7_H

#include <stdint.h>

enum { FONT5X7_W = 5, FONT5X7_H = 7 };

/* The 7 rows of ch, bit 4 (0x10) the leftmost column; NULL for a space or a character the font
 * lacks (letters are found in either case). */
const uint8_t *font5x7_rows(char ch);

#endif
