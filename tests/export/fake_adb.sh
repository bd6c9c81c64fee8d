#!/bin/sh
# Stand-in adb for the phone tests: the "phone" is a folder of this machine (the tests pass it as device_dir).
# push copies the file; shell runs its command line through sh -c, as adb's device shell does (so an unquoted
# file name such as "x;touch INJECTED;.tflite" would run code here); getprop answers "Fake".
# Every call is appended to $FAKE_ADB_LOG.
echo "$*" >> "${FAKE_ADB_LOG:-/dev/null}"
[ "$1" = "-s" ] && shift 2
cd "$(dirname "$0")" || exit 1
case "$1" in
  push) cp "$2" "$3" ;;
  shell)
    shift
    case "$*" in
      getprop*) echo "Fake" ;;
      *) exec sh -c "$*" ;;
    esac ;;
esac
