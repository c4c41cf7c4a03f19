#!/usr/bin/env bash
# End-to-end checks of `effdet train`'s fine-tuning flags on `effdet synth` data (64x64, 8 images):
#  - --initial-checkpoint of a 5-class run into 3 classes re-initialises the class head's predict
#    conv (one info line), with --remove-weights and --freeze-layers taking several prefixes each;
#  - --pretrained-backbone (a checkpoint, effdet names) with --head-only;
#  - bad prefixes, missing or conflicting files: exactly one error line naming the thing.
# The exact tensor-level behaviour is tests/unit/test_finetune.c's.
set -u
BIN=${EFFDET_BIN:?EFFDET_BIN must point at build/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "$0")/lib/common.bash"

"$BIN/effdet" synth --out "$T/s5" --images 8 --seed 5 --size 64x64 --classes 5 >/dev/null || bad "synth 5 classes"
"$BIN/effdet" synth --out "$T/s3" --images 8 --seed 6 --size 64x64 --classes 3 >/dev/null || bad "synth 3 classes"
COMMON=(--model tf_efficientdet_d0 --image-size 64x64 --batch-size 4 --log-interval 100)
train() { "$BIN/effdet" train "${COMMON[@]}" "$@"; }
BASE="$T/base/checkpoint-2.safetensors"

train --data "$T/s5" --epochs 1 --output "$T/base" >"$T/base.log" 2>&1 || bad "base run: $(tail -2 "$T/base.log")"
check "a 5-class base checkpoint" "[ -s '$BASE' ]"

# ---- initial checkpoint of other classes, removed weights, frozen layers --------------------------
train --data "$T/s3" --initial-checkpoint "$BASE" --remove-weights box_net.predict class_net.predict.conv_dw \
  --freeze-layers backbone fpn.cell.0 --epochs 2 --output "$T/ft" >"$T/ft.log" 2>&1
check "fine-tune from 5 to 3 classes with --remove-weights and --freeze-layers runs" \
  "[ \$? -eq 0 ] && [ -s '$T/ft/checkpoint-4.safetensors' ]"
check "the class head's predict conv is re-initialised, in one info line" \
  "[ \$(grep -c \"re-initialised the class head's predict conv for 3 classes: class_net.predict.conv_pw.weight\" '$T/ft.log') -eq 1 ]"
check "--remove-weights takes both prefixes (4 tensors not loaded)" "grep -q '4 tensors not loaded' '$T/ft.log'"
check "--freeze-layers freezes the backbone and a BiFPN cell" "grep -q 'frozen: .* BN layers on running statistics' '$T/ft.log'"
# The settings record, with JSON's quotes and their escapes dropped.
settings_of() { head -c 65536 "$1" | tr -d '\\"' | grep -ao 'settings:{[^}]*}'; }
check "the checkpoint records the fine-tuning settings" \
  "settings_of '$T/ft/checkpoint-4.safetensors' | grep -qF 'remove_weights:[box_net.predict,class_net.predict.conv_dw],pretrained_backbone:,freeze_layers:[backbone,fpn.cell.0],head_only:false'"

# ---- pretrained backbone, head only ---------------------------------------------------------------
train --data "$T/s3" --pretrained-backbone "$BASE" --head-only --epochs 2 --output "$T/head" >"$T/head.log" 2>&1
check "--pretrained-backbone with --head-only runs" "[ \$? -eq 0 ] && [ -s '$T/head/checkpoint-4.safetensors' ]"
check "--pretrained-backbone loads the 304 backbone tensors" "grep -q 'loaded the backbone (304 tensors, effdet names)' '$T/head.log'"

# ---- errors: one line naming the thing ------------------------------------------------------------
quiet() { EFFDET_LOG=warn "$BIN/effdet" train "${COMMON[@]}" --data "$T/s3" --epochs 1 --output "$T/bad" "$@"; }
expect_error "--freeze-layers prefix matching nothing" "--freeze-layers: 'backbone.nope' matches no tensor" \
  quiet --freeze-layers backbone.blocks.0 backbone.nope
expect_error "--remove-weights prefix matching nothing" "--remove-weights: 'class_net.nope' matches no tensor" \
  quiet --initial-checkpoint "$BASE" --remove-weights class_net.nope
expect_error "--remove-weights without --initial-checkpoint" "--remove-weights needs --initial-checkpoint" \
  quiet --remove-weights class_net
expect_error "--pretrained-backbone with --initial-checkpoint" "give one of them" \
  quiet --initial-checkpoint "$BASE" --pretrained-backbone "$BASE"
expect_error "--pretrained-backbone file missing" "$T/nope.safetensors" quiet --pretrained-backbone "$T/nope.safetensors"
expect_error "--initial-checkpoint of another variant" "the file says it holds tf_efficientdet_d0, not tf_efficientdet_d1" \
  quiet --initial-checkpoint "$BASE" --model tf_efficientdet_d1

echo "finetune_cli: $fails failed"
[ "$fails" -eq 0 ]
