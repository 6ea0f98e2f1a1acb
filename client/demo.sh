#!/usr/bin/env bash
# The finetuned demo: transfer learning on Fashion-MNIST, end to end.
#   1. start finetuned on its embedded defaults (SQLite under ./var/demo, one local worker);
#   2. train a source model on classes 0-4 (t-shirt, trouser, pullover, dress, coat);
#   3. fine-tune it (--weights model://ID) on classes 5-9 (sandal, shirt, sneaker, bag,
#      ankle boot) from only a few images per class, and train the same recipe from
#      scratch beside it;
#   4. download both models and print two figures for each, saying which images each
#      comes from: validation accuracy (images held out of Fashion-MNIST's train
#      file; they chose the best epoch) and test accuracy (every t10k image of
#      classes 5-9, used for nothing else), then stop the server.
# Usage: client/demo.sh BIN_DIR   (./dev.sh demo builds and calls this)
set -euo pipefail
BIN=${1:-build/bin}
DATA=/usr/share/datasets/fashion-mnist
VAR=${DEMO_VAR:-./var/demo}
SHOTS=${DEMO_SHOTS:-5}                 # training images per class for the target task
SOURCE_PER_CLASS=${DEMO_SOURCE_PER_CLASS:-600}
export FTCTL_SERVER

if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "demo: $DATA is missing; install the Debian package dataset-fashion-mnist" >&2
  exit 1
fi
mkdir -p "$VAR"
rm -f "$VAR/port"
"$BIN/finetuned" --listen=127.0.0.1:0 --port-file="$VAR/port" --data-dir="$VAR" \
  --dataset-roots="$DATA" --local-workers=1 >"$VAR/finetuned.log" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    echo "demo: finetuned stopped cleanly"
  fi
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$VAR/port" ] && break; sleep 0.1; done
[ -s "$VAR/port" ] || { echo "demo: finetuned did not start:"; cat "$VAR/finetuned.log"; exit 1; }
FTCTL_SERVER=127.0.0.1:$(cat "$VAR/port")
echo "demo: finetuned is serving on $FTCTL_SERVER (data in $VAR, log $VAR/finetuned.log)"
ftctl() { "$BIN/ftctl" "$@"; }
job_field() { sed -n "s/^$1 *//p"; }

COMMON=(--backbone resnet18 --image-size 32 --batch-size 32 --seed 1 --augment light)
echo
echo "== 1/3 source model: classes 0-4, $SOURCE_PER_CLASS images each =="
ftctl submit --name source "${COMMON[@]}" --epochs 3 --lr 0.002 \
  --dataset "file://$DATA?classes=0,1,2,3,4&max_per_class=$SOURCE_PER_CLASS&max_val_per_class=200" \
  --follow | tee "$VAR/source.txt"
SOURCE_MODEL=$(job_field model <"$VAR/source.txt")

# val=split: validation is held out of the train file, so the t10k files become the
# test split, which neither trains nor picks the exported epoch.
TARGET="file://$DATA?classes=5,6,7,8,9&max_per_class=$SHOTS&max_val_per_class=400&val=split"
echo
echo "== 2/3 transfer: classes 5-9 from $SHOTS images each, starting from model://$SOURCE_MODEL =="
ftctl submit --name transfer "${COMMON[@]}" --epochs 15 --lr 0.001 --freeze-depth 3 \
  --weights "model://$SOURCE_MODEL" --dataset "$TARGET" --follow | tee "$VAR/transfer.txt"
TRANSFER_MODEL=$(job_field model <"$VAR/transfer.txt")

echo
echo "== 3/3 the same data, epochs and learning rate from scratch (random weights, all layers trained) =="
ftctl submit --name scratch "${COMMON[@]}" --epochs 15 --lr 0.001 --freeze-depth 0 \
  --weights none --dataset "$TARGET" --follow | tee "$VAR/scratch.txt"
SCRATCH_MODEL=$(job_field model <"$VAR/scratch.txt")

echo
for m in "$TRANSFER_MODEL" "$SCRATCH_MODEL"; do
  ftctl models download "$m" --dir "$VAR/models/$m" >/dev/null
done
# field MODEL KEY: a value of the model's metadata.json (metrics.* for its metrics).
field() {
  /usr/bin/python3 -c 'import json,sys
m = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): m = m[k]
print("%.4f" % m if isinstance(m, float) else m)' "$VAR/models/$1/metadata.json" "$2"
}
echo "== accuracy on classes 5-9 after training on $SHOTS images per class =="
echo "  test: Fashion-MNIST t10k, $(field "$TRANSFER_MODEL" test_images) images, never used to train or to choose an epoch"
echo "  validation: $(field "$TRANSFER_MODEL" val_images) images held out of the train file ($(field "$TRANSFER_MODEL" val_source)); they chose the exported epoch"
printf '  %-30s test %s   validation %s\n' "transfer from model://$SOURCE_MODEL" \
  "$(field "$TRANSFER_MODEL" metrics.test_accuracy)" "$(field "$TRANSFER_MODEL" metrics.val_accuracy)"
printf '  %-30s test %s   validation %s\n' "from scratch" \
  "$(field "$SCRATCH_MODEL" metrics.test_accuracy)" "$(field "$SCRATCH_MODEL" metrics.val_accuracy)"
echo "  models downloaded to $VAR/models/ (model.pt loads with torch.jit.load; see metadata.json)"
