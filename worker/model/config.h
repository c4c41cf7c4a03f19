/* config.h: EfficientDet variants D0-D7x and their EfficientNet backbones, as effdet/timm build them
 * (effdet config/model_config.py, timm efficientnet `_gen_efficientnet` with the tf_ variants).
 *
 * A ModelConfig is plain data: the expanded list of backbone blocks with their channel counts, the
 * BiFPN and head sizes, the pyramid levels, the anchor settings and the post-processing limits. */
#ifndef EFFDET_MODEL_CONFIG_H
#define EFFDET_MODEL_CONFIG_H

#include "shared/err.h"

enum { MAX_BLOCKS = 64, MAX_LEVELS = 6, MAX_FPN_NODES = 2 * MAX_LEVELS, MAX_FPN_INPUTS = 3 };

typedef enum { BLOCK_DS = 0, BLOCK_IR = 1 } BlockKind;

/* One EfficientNet block: DepthwiseSeparable (stage 0) or InvertedResidual (MBConv). */
typedef struct BlockCfg {
    BlockKind kind;
    int stage, index;   /* effdet names it backbone.blocks.STAGE.INDEX */
    int in, mid, out;   /* channels; mid = in * expansion (mid == in for DS blocks) */
    int k, stride;      /* depthwise kernel and stride */
    int se_channels;    /* squeeze-excitation reduced channels */
    int skip;           /* residual: stride 1 and in == out */
} BlockCfg;

/* One BiFPN node: its pyramid level and the indices of its inputs in the node list of the cell
 * (0 .. num_levels-1 are the cell's inputs P_min .. P_max, then the nodes in order). */
typedef struct FpnNodeCfg {
    int level;
    int n_inputs;
    int inputs[MAX_FPN_INPUTS];
} FpnNodeCfg;

typedef struct ModelConfig {
    char name[32];
    char backbone[32];
    int image_h, image_w;    /* default input size */
    int num_classes;
    int stem_channels;
    int n_blocks;
    BlockCfg blocks[MAX_BLOCKS];
    int feat_block[3];       /* last block of the stride 8, 16, 32 stages (BiFPN inputs) */
    int fpn_channels, fpn_repeats, head_repeats;
    int min_level, max_level, num_levels;
    int weighted_fusion;     /* 1: fast normalized fusion with edge weights; 0: plain sum */
    int n_nodes;
    FpnNodeCfg nodes[MAX_FPN_NODES];
    int num_scales, num_aspects;
    double aspects[3][2];    /* (x, y) multipliers */
    double anchor_scale;
    float bn_eps;
    int max_detection_points, max_det_per_image;
    float nms_iou;
} ModelConfig;

/* Fills cfg for a variant name ("tf_efficientdet_d0" .. "tf_efficientdet_d7x"; the short "d0" ..
 * "d7x" and "efficientdet_d0"-style aliases are accepted). num_classes <= 0 keeps the default 90. */
int model_config_get(const char *name, int num_classes, ModelConfig *cfg, Err *err);

/* Names of every variant, NULL-terminated, for help texts and tests. */
const char *const *model_config_names(void);

/* Anchors per feature location. */
static inline int model_config_anchors_per_loc(const ModelConfig *c)
{
    return c->num_scales * c->num_aspects;
}

/* Feature map sizes per level for an input size, effdet's rule: each level is ceil(previous / 2),
 * starting from the input size (so level L is the input halved L times). */
void model_config_feat_sizes(const ModelConfig *c, int h, int w, int *fh, int *fw);

#endif
