#!/usr/bin/env bash
# Fine-tune -> evaluate, on a CPU in a few minutes: LoRA on SmolLM2-135M-Instruct for a small
# extraction task, then the base model and the tuned adapter scored side by side on held-out notes.
#   bash examples/extraction/demo.sh [WORKDIR]       (default .demo; STEPS=N and TEST=N shrink it)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mkdir -p "${1:-$root/.demo}" && cd "${1:-$root/.demo}" && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
kit() { "$python" -m kit.cli "$@"; }

[ -f "$work/smollm2/config.json" ] || "$python" "$root/tests/standin/smollm2.py" "$work/smollm2" >/dev/null 2>&1
"$python" "$here/make_data.py" "$work/extraction" --test "${TEST:-12}"
cat > "$work/extraction/finetune.yaml" <<YAML
model: $work/smollm2
data: {train: $work/extraction/train.jsonl, format: chat}
method: lora
lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}
training: {max_steps: ${STEPS:-12}, learning_rate: 1.0e-3, warmup_steps: 2, batch_size: 4, seq_len: 192,
           gradient_checkpointing: false, bf16: false, seed: 7}
checkpoint: {every_steps: 100, keep: 1}
output_dir: $work/extraction/lora
YAML
rm -rf "$work/extraction/lora" "$work/extraction/base.jsonl" "$work/extraction/tuned.jsonl"
echo "== fine-tuning (LoRA, ${STEPS:-12} steps on the CPU)"
"$python" -m kit.train "$work/extraction/finetune.yaml"
echo "== the base model and the tuned adapter on the held-out notes"
common=(--prompts "$work/extraction/prompts.jsonl" --fields name,city,role --max-tokens 40)
kit eval generate --model "$work/smollm2" --out "$work/extraction/base.jsonl" "${common[@]}"
kit eval generate --model "$work/smollm2" --adapter "$work/extraction/lora/adapter" --out "$work/extraction/tuned.jsonl" "${common[@]}"
kit eval compare --gold "$work/extraction/gold.jsonl" --pred "$work/extraction/base.jsonl" \
  --pred "$work/extraction/tuned.jsonl" --label base --label tuned ${COMPARE_ARGS:-}
