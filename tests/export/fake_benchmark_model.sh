#!/bin/sh
# Stand-in LiteRT benchmark_model for the phone tests: prints a run's output; $FAKE_BM picks a damaged one.
case "${FAKE_BM:-ok}" in
  big) head -c 20000000 /dev/zero | tr '\0' a ;;  # 20 MB, past the 16 MiB an adb command may print
  inf) echo "Inference timings in us: Init: 1, First inference: 1, Warmup (avg): 1, Inference (avg): 1$(printf '%0400d' 0)" ;;
esac
echo "args: $*"
echo "count=5 first=900 curr=850 min=800 max=990 avg=860.5 std=40"
echo "count=50 first=900 curr=850 min=800 max=990 avg=860.5 std=40"
echo "Inference timings in us: Init: 2000, First inference: 900, Warmup (avg): 870, Inference (avg): 860.5"
