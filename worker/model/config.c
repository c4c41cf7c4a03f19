/* config.c: the EfficientDet variant table and the EfficientNet block expansion (see config.h).
 *
 * The backbone follows timm's tf_efficientnet_bX: the B0 stage table below, channels scaled by the
 * width multiplier and rounded to a multiple of 8 (round_channels / make_divisible), each stage's
 * repeats scaled by the depth multiplier and rounded up (depth_trunc 'ceil'). The BiFPN follows
 * effdet's bifpn_config: a top-down pass from max_level-1 to min_level, then a bottom-up pass from
 * min_level+1 to max_level. */
#include "worker/model/config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct Variant {
    const char *name;
    const char *backbone;
    double width, depth; /* EfficientNet multipliers */
    int image_size, fpn_channels, fpn_repeats, head_repeats, max_level;
    double anchor_scale;
    int weighted_fusion;
} Variant;

static const Variant variants[] = {
    {"tf_efficientdet_d0", "tf_efficientnet_b0", 1.0, 1.0, 512, 64, 3, 3, 7, 4.0, 1},
    {"tf_efficientdet_d1", "tf_efficientnet_b1", 1.0, 1.1, 640, 88, 4, 3, 7, 4.0, 1},
    {"tf_efficientdet_d2", "tf_efficientnet_b2", 1.1, 1.2, 768, 112, 5, 3, 7, 4.0, 1},
    {"tf_efficientdet_d3", "tf_efficientnet_b3", 1.2, 1.4, 896, 160, 6, 4, 7, 4.0, 1},
    {"tf_efficientdet_d4", "tf_efficientnet_b4", 1.4, 1.8, 1024, 224, 7, 4, 7, 4.0, 1},
    {"tf_efficientdet_d5", "tf_efficientnet_b5", 1.6, 2.2, 1280, 288, 7, 4, 7, 4.0, 1},
    {"tf_efficientdet_d6", "tf_efficientnet_b6", 1.8, 2.6, 1280, 384, 8, 5, 7, 4.0, 0},
    {"tf_efficientdet_d7", "tf_efficientnet_b6", 1.8, 2.6, 1536, 384, 8, 5, 7, 5.0, 0},
    {"tf_efficientdet_d7x", "tf_efficientnet_b7", 2.0, 3.1, 1536, 384, 8, 5, 8, 4.0, 0},
};
enum { N_VARIANTS = sizeof variants / sizeof variants[0] };

/* EfficientNet-B0 stages: block kind, repeats, kernel, stride, expansion, output channels.
 * Every block has squeeze-excitation with ratio 0.25 of the block's input channels. */
static const struct {
    BlockKind kind;
    int repeats, k, stride, expand, out;
} b0_stages[7] = {
    {BLOCK_DS, 1, 3, 1, 1, 16},  {BLOCK_IR, 2, 3, 2, 6, 24},  {BLOCK_IR, 2, 5, 2, 6, 40},
    {BLOCK_IR, 3, 3, 2, 6, 80},  {BLOCK_IR, 3, 5, 1, 6, 112}, {BLOCK_IR, 4, 5, 2, 6, 192},
    {BLOCK_IR, 1, 3, 1, 6, 320},
};

/* timm make_divisible(v, 8): round to the nearest multiple of 8, never below 90% of v. */
static int make_divisible(double v)
{
    int divisor = 8;
    int nv = (int)(v + divisor / 2.0) / divisor * divisor;
    if (nv < divisor) nv = divisor;
    if (nv < 0.9 * v) nv += divisor;
    return nv;
}

static int round_channels(int c, double mult) { return mult == 1.0 ? c : make_divisible(c * mult); }

static const char *const names[N_VARIANTS + 1] = {
    "tf_efficientdet_d0", "tf_efficientdet_d1", "tf_efficientdet_d2",
    "tf_efficientdet_d3", "tf_efficientdet_d4", "tf_efficientdet_d5",
    "tf_efficientdet_d6", "tf_efficientdet_d7", "tf_efficientdet_d7x", NULL,
};

const char *const *model_config_names(void) { return names; }

static const Variant *find_variant(const char *name)
{
    const char *suffix = strrchr(name, '_');
    suffix = suffix ? suffix + 1 : name; /* "d0" from "tf_efficientdet_d0" or "efficientdet_d0" */
    for (int i = 0; i < N_VARIANTS; i++) {
        if (!strcmp(name, variants[i].name)) return &variants[i];
        if (!strcmp(suffix, strrchr(variants[i].name, '_') + 1) &&
            (!strcmp(name, suffix) || strstr(name, "efficientdet_")))
            return &variants[i];
    }
    return NULL;
}

static int expand_backbone(ModelConfig *c, const Variant *v, Err *err)
{
    c->stem_channels = round_channels(32, v->width);
    int in = c->stem_channels;
    c->n_blocks = 0;
    for (int s = 0; s < 7; s++) {
        int repeats = (int)ceil(b0_stages[s].repeats * v->depth);
        int out = round_channels(b0_stages[s].out, v->width);
        for (int i = 0; i < repeats; i++) {
            if (c->n_blocks >= MAX_BLOCKS) return err_set(err, "%s: too many blocks", v->name);
            BlockCfg *b = &c->blocks[c->n_blocks++];
            b->kind = b0_stages[s].kind;
            b->stage = s, b->index = i;
            b->in = in, b->out = out;
            b->mid = in * b0_stages[s].expand;
            b->k = b0_stages[s].k;
            b->stride = i == 0 ? b0_stages[s].stride : 1;
            /* timm: SqueezeExcite(mid, rd_ratio = 0.25 / expansion), rounded. */
            b->se_channels = (int)lround(b->mid * (0.25 / b0_stages[s].expand));
            b->skip = b->stride == 1 && in == out;
            in = out;
        }
        if (s == 2) c->feat_block[0] = c->n_blocks - 1;
        if (s == 4) c->feat_block[1] = c->n_blocks - 1;
        if (s == 6) c->feat_block[2] = c->n_blocks - 1;
    }
    return 0;
}

/* effdet bifpn_config: node ids 0..L-1 are the inputs; each new node gets the next id. */
static void build_bifpn(ModelConfig *c)
{
    int last_id[MAX_LEVELS], all_ids[MAX_LEVELS][2], n_ids[MAX_LEVELS];
    int L = c->num_levels, next = L;
    for (int i = 0; i < L; i++) last_id[i] = i, all_ids[i][0] = i, n_ids[i] = 1;
    c->n_nodes = 0;
    for (int lv = L - 2; lv >= 0; lv--) { /* top-down */
        FpnNodeCfg *nd = &c->nodes[c->n_nodes++];
        nd->level = c->min_level + lv;
        nd->n_inputs = 2;
        nd->inputs[0] = last_id[lv];
        nd->inputs[1] = last_id[lv + 1];
        all_ids[lv][n_ids[lv]++] = next;
        last_id[lv] = next++;
    }
    for (int lv = 1; lv < L; lv++) { /* bottom-up */
        FpnNodeCfg *nd = &c->nodes[c->n_nodes++];
        nd->level = c->min_level + lv;
        nd->n_inputs = 0;
        for (int j = 0; j < n_ids[lv]; j++) nd->inputs[nd->n_inputs++] = all_ids[lv][j];
        nd->inputs[nd->n_inputs++] = last_id[lv - 1];
        last_id[lv] = next++;
    }
}

int model_config_get(const char *name, int num_classes, ModelConfig *c, Err *err)
{
    const Variant *v = find_variant(name);
    if (!v) return err_set(err, "unknown model '%s' (known: tf_efficientdet_d0 .. d7, d7x)", name);
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", v->name);
    snprintf(c->backbone, sizeof c->backbone, "%s", v->backbone);
    c->image_h = c->image_w = v->image_size;
    c->num_classes = num_classes > 0 ? num_classes : 90;
    if (expand_backbone(c, v, err) != 0) return -1;
    c->fpn_channels = v->fpn_channels;
    c->fpn_repeats = v->fpn_repeats;
    c->head_repeats = v->head_repeats;
    c->min_level = 3;
    c->max_level = v->max_level;
    c->num_levels = c->max_level - c->min_level + 1;
    c->weighted_fusion = v->weighted_fusion;
    build_bifpn(c);
    c->num_scales = 3;
    c->num_aspects = 3;
    const double aspects[3][2] = {{1.0, 1.0}, {1.4, 0.7}, {0.7, 1.4}};
    memcpy(c->aspects, aspects, sizeof aspects);
    c->anchor_scale = v->anchor_scale;
    c->bn_eps = 1e-3f;
    c->max_detection_points = 5000;
    c->max_det_per_image = 100;
    c->nms_iou = 0.5f;
    return 0;
}

void model_config_feat_sizes(const ModelConfig *c, int h, int w, int *fh, int *fw)
{
    for (int l = 1; l <= c->max_level; l++) {
        h = (h - 1) / 2 + 1;
        w = (w - 1) / 2 + 1;
        if (l >= c->min_level) fh[l - c->min_level] = h, fw[l - c->min_level] = w;
    }
}
