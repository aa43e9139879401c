#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic corpus, on CPU, in one output folder (`make demo`).
#   synthetic corpus -> downstream splits -> cleaned shards without their test/val images -> tiny DINOv3 teacher -> ResNet-50 distillation -> export
#   -> one limited-label sweep on synthetic BUSI/DDTI: R50-Rand vs the distilled encoder (paper 002 tables)
#      plus two KD students (ViT -> MobileNetV3, distilled R50 U-Net -> EfficientNet-Lite0 U-Net) at two
#      label fractions, with an edge column (CPU latency, ONNX / INT8) and Pareto plots -> t-SNE.
# Real runs swap in the real teacher id (facebook/dinov3-vitb16-pretrain-lvd1689m), the real corpus
# and GPUs: see README "Pretraining" and pretrain/configs/dinov3_vitb16_resnet50.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the demo never downloads
step() { printf '\n== %s ==\n' "$*"; }

if [ ! -f "$OUT/corpus_truth.jsonl" ]; then
  step "synthetic data: 600-image corpus (6 sources), BUSI and DDTI layouts"
  rm -rf "$OUT/corpus" "$OUT/busi" "$OUT/ddti"
  # The truth file sits outside the data folders: the shard builder scans them.
  $PY -m shards.synth --layout corpus --n 600 --seed 0 --out "$OUT/corpus" --truth "$OUT/corpus_truth.jsonl.tmp" --workers 2
  $PY -m shards.synth --layout busi --n 120 --seed 0 --out "$OUT/busi" --workers 2
  $PY -m shards.synth --layout ddti --n 96 --seed 0 --out "$OUT/ddti" --workers 2
  mv "$OUT/corpus_truth.jsonl.tmp" "$OUT/corpus_truth.jsonl"
fi

step "splits: the downstream sweep's train/val/test splits first, so the corpus can leave their images out"
$PY -m downstream.sweep --config downstream/configs/tiny.yaml busi="$OUT/busi" ddti="$OUT/ddti" \
    out="$OUT/downstream" --splits-only > "$OUT/splits.txt"
excludes=()
while read -r f; do excludes+=(--exclude "$f"); done < "$OUT/splits.txt"

step "shards: clean, de-duplicate and pack the corpus, no copy of a test or validation image (resumes)"
sources=()
for d in "$OUT"/corpus/*/; do sources+=(--source "$(basename "$d")=$d"); done
$PY -m shards.build "${sources[@]}" "${excludes[@]}" --out "$OUT/shards" --size 128 --samples-per-shard 200 --workers 2
$PY -m shards.inspect "$OUT/shards" --sheet "$OUT/shards_contact_sheet.png" --per-source 8

step "pretraining: tiny random DINOv3 teacher -> ResNet-50, 300 CPU steps"
[ -f "$OUT/teacher/model.safetensors" ] || $PY -m pretrain.teacher init-tiny --out "$OUT/teacher"
$PY pretrain/run.py --config pretrain/configs/tiny.yaml \
    data.shards="$OUT/shards" teacher.name_or_path="$OUT/teacher" out="$OUT/pretrain"

step "export: timm / Hugging Face Hub folder (upload shown as a dry run)"
$PY -m pretrain.export --checkpoint "$OUT/pretrain" --out "$OUT/export" \
    --push-to-hub your-lab/sonodistill-r50-demo --dry-run
$PY -c "import timm, sys; m = timm.create_model('local-dir:' + sys.argv[1], pretrained=True); print('timm loads the encoder:', type(m).__name__, m.num_features, 'features')" "$OUT/export"

step "downstream: R50-Rand vs R50-Distill-US (linear probe) and two KD students, 20 % and 100 % labels, edge column"
$PY -m downstream.sweep --config downstream/configs/tiny.yaml busi="$OUT/busi" ddti="$OUT/ddti" \
    "encoders=[R50-Rand=rand,R50-Distill-US=$OUT/export]" out="$OUT/downstream" --print-tables

step "representation: t-SNE of corpus embeddings coloured by source (Fig. 2) + silhouette"
$PY -m downstream.embed --shards "$OUT/shards" --encoder R50-Rand=rand --encoder R50-Distill-US="$OUT/export" \
    --out "$OUT/downstream/embed" --max-samples 400 --size 64  # 64 px: the size it was distilled at

step "done: everything is under $OUT"
cat <<EOF
  shard manifest         $OUT/shards/manifest.json   contact sheet  $OUT/shards_contact_sheet.png
  pretraining            $OUT/pretrain (loss_curve.png, metrics.jsonl, TensorBoard: tb/, checkpoints)
  exported encoder       $OUT/export (model.safetensors, config.json, README.md model card)
  downstream tables      $OUT/downstream/tables.md (Tables 1-4, test-set contamination, edge table)
  results                $OUT/downstream/results.jsonl   splits  $OUT/downstream/splits/ (kept out of the shards)
  plots                  $OUT/downstream/fractions_*.png  $OUT/downstream/pareto_*.png
  KD reports             $OUT/downstream/runs/busi-cls/kd_vit_mobilenet/finetune/f1_s0/report.md
                         $OUT/downstream/runs/ddti-seg/kd_seg_unet/finetune/f1_s0/report.md
  t-SNE                  $OUT/downstream/embed/tsne.png  silhouettes  $OUT/downstream/embed/embed.json
EOF
