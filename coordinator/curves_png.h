/* curves_png.h: the end-of-training picture, a PNG of the loss per step and the mAP per epoch.
 *
 * A 900x400 RGB image: the left panel plots loss against step, the right one mAP against epoch,
 * each with axes, tick marks, grid lines and numeric tick labels in a built-in 5x7 pixel font.
 * Non-finite values are skipped. When there are more loss points than pixel columns, each column
 * shows the mean of its points, which also smooths the per-step noise. An empty series leaves an
 * empty panel ("no data"). The file is written to path.tmp, fsynced and renamed over path, so a
 * reader never sees a half-written PNG. */
#ifndef EFFDET_CURVES_PNG_H
#define EFFDET_CURVES_PNG_H

#include "shared/err.h"

#define CURVES_PNG_WIDTH 900
#define CURVES_PNG_HEIGHT 400
/* The two panels split the width evenly: loss on the left, mAP on the right. */
#define CURVES_PNG_PANEL_WIDTH (CURVES_PNG_WIDTH / 2)

/* 0 or -1 with err naming the file. The x arrays need not be sorted; the series are sorted by x
 * before plotting. */
int curves_png_write(const char *path, const double *loss_steps, const double *loss, int n_loss,
                     const double *map_epochs, const double *map, int n_map, Err *err);

#endif
