#!/usr/bin/env bash
# Captures README screenshots of the explorer on the embedded demo: builds the release binary,
# starts the app under Xvfb once per view, waits until the demo profile is ready, and saves
# screenshots/<view>.png with ImageMagick's `import`.
#
# Needs: xvfb xauth imagemagick, and a Vulkan or GL driver (Mesa: mesa-vulkan-drivers
# libvulkan1, or libegl-mesa0 libgl1-mesa-dri). Debian/Ubuntu:
#   apt-get install -y --no-install-recommends xvfb xauth imagemagick xdotool \
#     mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri
#
# Usage: scripts/screenshots.sh [view ...]
#   (views: heatmap subjects load das tokens selection steering training gguf imported)
# The steering view steers a neutral prompt toward the code_python DAS top-16 experts (bias 2)
# and waits for both continuations and the routing difference; the training view trains LoRA on
# the law hot-25 % selection for 60 steps and waits for it to finish. The gguf view opens the
# model tab with a Q8_0 GGUF test fixture loaded (llama.cpp's converter; tokenizer from the
# file's metadata) and profiled on the demo prompts. The imported view opens a count-only profile
# imported from 50,000 tokens of DeepSeek-V3-shaped SGLang routing (58 MoE layers × 256 experts,
# written by examples/make_import_bench.rs), heatmap of one subject against the pooled routing.
set -euo pipefail
cd "$(dirname "$0")/.."

VIEWS=("$@")
if [ ${#VIEWS[@]} -eq 0 ]; then
  VIEWS=(heatmap subjects load das tokens selection steering training gguf imported)
fi
SIZE=${SCREENSHOT_SIZE:-1280x800}
DISPLAY_NUM=${SCREENSHOT_DISPLAY:-:97}
TIMEOUT_SECS=${SCREENSHOT_TIMEOUT:-180}

for tool in Xvfb import; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install xvfb imagemagick)" >&2; exit 1; }
done

cargo build --release --bin moescope --example make_import_bench
BIN=target/release/moescope

WORK=$(mktemp -d)
# A throwaway home so the app's persisted UI state does not leak into (or from) the user's.
export HOME="$WORK/home" XDG_DATA_HOME="$WORK/data" XDG_CONFIG_HOME="$WORK/config"
export XDG_RUNTIME_DIR="$WORK/runtime"
mkdir -p "$HOME" "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"

Xvfb "$DISPLAY_NUM" -screen 0 "${SIZE}x24" -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
XVFB_PID=$!
APP_PID=""
cleanup() {
  [ -n "$APP_PID" ] && kill "$APP_PID" 2>/dev/null || true
  kill "$XVFB_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export DISPLAY=$DISPLAY_NUM
sleep 1

mkdir -p screenshots
for view in "${VIEWS[@]}"; do
  ready="$WORK/ready-$view"
  hook=$view
  args=()
  if [ "$view" = gguf ]; then
    hook=load
    args=(gui --model "$PWD/tests/fixtures/gguf/olmoe-q8_0.gguf" --data "$PWD/../shared/demo-corpus/prompts")
  fi
  if [ "$view" = imported ]; then
    target/release/examples/make_import_bench "$WORK/routing" 50000 >/dev/null
    "$BIN" import --format sglang "$WORK/routing/sglang.jsonl" --model "$WORK/routing" \
      --out "$WORK/routing/imported.json" >/dev/null
    args=(gui --profile "$WORK/routing/imported.json")
  fi
  MOESCOPE_SCREENSHOT="$hook" MOESCOPE_SCREENSHOT_READY="$ready" "$BIN" "${args[@]}" >"$WORK/app-$view.log" 2>&1 &
  APP_PID=$!
  waited=0
  until [ -e "$ready" ]; do
    if ! kill -0 "$APP_PID" 2>/dev/null; then
      echo "error: the app exited before the $view view was ready:" >&2
      cat "$WORK/app-$view.log" >&2
      exit 1
    fi
    if [ "$waited" -ge "$TIMEOUT_SECS" ]; then
      echo "error: the $view view was not ready after ${TIMEOUT_SECS}s" >&2
      cat "$WORK/app-$view.log" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  sleep 2 # let a few frames settle (tooltips, plots)
  import -window root "screenshots/$view.png"
  echo "screenshots/$view.png (ready after ${waited}s)"
  kill "$APP_PID" 2>/dev/null || true
  wait "$APP_PID" 2>/dev/null || true
  APP_PID=""
done
