#!/usr/bin/env bash
# Fails when a crate pulls in what its job does not need (docs/architecture.md, "Crates"):
# each line is a crate and the packages that must not appear in its normal dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=(
    "vigil-core:     gstreamer ort sled rumqttc rustls tokio cudarc tensorrt-sys vigil-"
    "vigil-config:   gstreamer ort sled rumqttc rustls tokio cudarc tensorrt-sys"
    "vigil-pipeline: gstreamer ort sled rumqttc rustls cudarc tensorrt-sys vigil-capture vigil-infer vigil-store"
    "vigil-capture:  ort sled rumqttc rustls cudarc tensorrt-sys vigil-infer vigil-store vigil-uplink"
    "vigil-infer:    gstreamer sled rumqttc rustls vigil-capture vigil-store vigil-uplink vigil-update vigil-ota"
    "vigil-store:    gstreamer ort rumqttc rustls cudarc tensorrt-sys vigil-capture vigil-infer vigil-uplink"
    "vigil-uplink:   gstreamer ort cudarc tensorrt-sys vigil-capture vigil-infer vigil-fleet"
    "vigil-fleet:    gstreamer ort rumqttc cudarc tensorrt-sys vigil-capture vigil-infer vigil-uplink vigil-update"
    "vigil-update:   gstreamer rumqttc vigil-capture vigil-uplink vigil-testkit"
    "vigil-tls:      tokio aws-lc-rs vigil-"
    "vigil:          vigil-ops vigil-testkit"
    "vigil-ota:      gstreamer ort sled rumqttc cudarc tensorrt-sys vigil-config vigil-capture vigil-infer vigil-pipeline vigil-store vigil-uplink vigil-fleet vigil-update vigil-testkit"
)

failed=0
for rule in "${rules[@]}"; do
    crate=${rule%%:*}
    forbidden=${rule#*:}
    # Every package in the crate's normal (non-dev, non-build) tree, the crate itself left out,
    # with all features on so that an optional dependency cannot hide.
    tree=$(cargo tree --locked -p "$crate" -e normal --all-features --prefix none --format '{p}' \
        | awk '{print $1}' | sort -u | grep -vx "$crate")
    for f in $forbidden; do
        # A trailing '-' forbids a family (vigil-: every other vigil crate).
        if [[ $f == *- ]]; then hits=$(grep -E "^${f}" <<<"$tree" || true); else hits=$(grep -x "$f" <<<"$tree" || true); fi
        if [[ -n $hits ]]; then
            echo "boundary: $crate must not depend on $(tr '\n' ' ' <<<"$hits")(see docs/architecture.md)" >&2
            failed=1
        fi
    done
done
[[ $failed == 0 ]] && echo "boundaries: ${#rules[@]} crates hold their dependency rules"
exit $failed
