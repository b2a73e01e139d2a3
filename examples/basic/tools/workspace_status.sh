#!/bin/sh
# Workspace status for stamped builds: STABLE_ keys go to stable-status.txt (a change re-runs the
# stamped actions), the others to volatile-status.txt (scrubbed from cache keys).
echo "STABLE_VERSION 1.0.0"
echo "BUILD_TIMESTAMP $(date +%s)"
