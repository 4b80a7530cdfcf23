SUMMARY = "vigil edge video appliance: cameras, INT8 models, events, MQTT fleet"
DESCRIPTION = "vigil reads cameras (CSI, USB, RTSP, files) through GStreamer, runs INT8 detection models on their frames under per-frame latency budgets, turns detections into events, stores them crash-safely and reports them to a fleet over MQTT with mutual TLS."
HOMEPAGE = "https://example.invalid/vigil"
BUGTRACKER = "https://example.invalid/vigil/issues"
SECTION = "multimedia"
# The workspace's licence (Cargo.toml). The repository has no licence file yet, so the common
# text is checksummed; the crates linked in keep their own (mostly MIT/Apache-2.0) licences.
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - no licence file in the repository to point at
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"
CVE_PRODUCT = "vigil"

DEPENDS = "gstreamer1.0 gstreamer1.0-plugins-base"

# The workspace version (Cargo.toml; .ci/check-yocto.sh compares them). Packaging appends the
# git revision after "+git".
PV = "0.1.0+git"

# Where the source comes from. A product layer or local.conf points these at its mirror and the
# commit it releases, whose Cargo.lock must be the one vigil-crates.inc was made from (README,
# "Building from git"). The kas file builds this checkout instead (externalsrc).
VIGIL_GIT_URI ?= "git://example.invalid/vigil;protocol=https;branch=main"
VIGIL_SRCREV ?= "aabd1830d5987b37da5ede049a5d3c5e06e83834"
SRC_URI = "${VIGIL_GIT_URI}"
SRCREV = "${VIGIL_SRCREV}"
S = "${WORKDIR}/git"
# The checkout this recipe sits in (yocto/meta-vigil/recipes-vigil/vigil/): what the kas file
# builds with externalsrc.
VIGIL_CHECKOUT = "${@os.path.normpath(os.path.join(d.getVar('FILE_DIRNAME'), '..', '..', '..', '..'))}"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

# A workspace member; the lockfile is the workspace's. cargo's --frozen (in CARGO_BUILD_FLAGS)
# keeps do_compile off the network: every crate comes from vigil-crates.inc through do_fetch.
CARGO_SRC_DIR = "appliance/vigil"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
# The workspace's release profile strips; bitbake strips itself and keeps the symbols for -dbg
# (a binary that arrives stripped is a QA error).
export CARGO_PROFILE_RELEASE_STRIP = "none"

# The workspace's minimum Rust (rust-version in Cargo.toml; .ci/check-yocto.sh keeps the two
# equal), checked at parse time: a Rust too old fails in seconds, not after rust-native built.
VIGIL_RUST_MIN = "1.92"

# TensorRT (with the CUDA pre-processing it implies) where meta-tegra provides it: the build
# links libnvinfer and libnvonnxparser and runs bindgen, which needs libclang (meta-clang's
# clang-native). NVRTC and the CUDA driver are loaded at run time.
PACKAGECONFIG ??= "${@'tensorrt' if 'tegra' in d.getVar('MACHINEOVERRIDES').split(':') else ''}"
PACKAGECONFIG[tensorrt] = ",,tensorrt-core tensorrt-plugins cuda-cudart clang-native,cuda-nvrtc tegra-libraries-cuda"
# scarthgap's cargo class does not pass PACKAGECONFIG_CONFARGS to cargo.
CARGO_BUILD_FLAGS += "${@bb.utils.contains('PACKAGECONFIG', 'tensorrt', '--features tensorrt', '', d)}"

# nooelint: oelint.task.noanonpython - parse-time checks: they skip the recipe with the reason
python () {
    from bb.utils import vercmp_string_op
    rust = (d.getVar('RUSTVERSION') or '0').rstrip('%')
    if not vercmp_string_op(rust, d.getVar('VIGIL_RUST_MIN'), '>='):
        raise bb.parse.SkipRecipe('needs Rust >= %s, this build has %s: add the scarthgap/rust mixin '
                                  '(meta-lts-mixins) at the commit the kas file pins' % (d.getVar('VIGIL_RUST_MIN'), rust))
    recorded = d.getVar('VIGIL_MIXIN_RUST_VERSION')
    if recorded and recorded != rust:
        bb.warn('vigil: the Rust mixin ships %s, the kas file records %s: update VIGIL_MIXIN_RUST_VERSION' % (rust, recorded))
    if 'tensorrt' in d.getVar('PACKAGECONFIG').split() and \
            'clang-layer' not in d.getVar('BBFILE_COLLECTIONS').split():
        raise bb.parse.SkipRecipe('PACKAGECONFIG tensorrt runs bindgen, which needs clang-native from meta-clang: '
                                  'add the layer, or set PACKAGECONFIG:remove:pn-vigil = "tensorrt"')
}

# tensorrt-sys/build.rs reads these. Unset, it would look in the build host's /usr; it must find
# TensorRT and CUDA in the target sysroot, and fail rather than link its stub.
do_compile:prepend() {
    if ${@bb.utils.contains('PACKAGECONFIG', 'tensorrt', 'true', 'false', d)}; then
        export TENSORRT_INCLUDE_DIR="${STAGING_INCDIR}"
        export TENSORRT_LIB_DIR="${STAGING_LIBDIR}"
        export CUDA_INCLUDE_DIRS="${STAGING_DIR_HOST}${prefix}/local/cuda-${CUDA_VERSION}/include"
        export VIGIL_TRT_REQUIRE_REAL=1
        export LIBCLANG_PATH="${STAGING_LIBDIR_NATIVE}"
        export BINDGEN_EXTRA_CLANG_ARGS="--sysroot=${STAGING_DIR_HOST}"
    fi
}

# What the .deb holds (docs/packaging.md): the binary (cargo_do_install), the configuration
# template as a conffile only group vigil reads (it may hold camera passwords), the unit, the
# demo model the template points at, the docs.
do_install:append() {
    install -d -m 0750 -g vigil ${D}${sysconfdir}/vigil
    install -m 0640 -g vigil ${S}/appliance/vigil/package/vigil.toml ${D}${sysconfdir}/vigil/vigil.toml

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/appliance/vigil/package/vigil.service ${D}${systemd_system_unitdir}/

    install -d ${D}${datadir}/vigil/models/shapes-v1/reference
    install -m 0644 ${S}/models/bundles/shapes-v1/manifest.toml ${S}/models/bundles/shapes-v1/*.onnx \
        ${D}${datadir}/vigil/models/shapes-v1/
    install -m 0644 ${S}/models/bundles/shapes-v1/reference/* ${D}${datadir}/vigil/models/shapes-v1/reference/

    install -d ${D}${docdir}/vigil
    install -m 0644 ${S}/README.md ${S}/docs/config.md ${S}/docs/mqtt.md ${S}/docs/ota.md \
        ${S}/docs/systemd.md ${D}${docdir}/vigil/
}

USERADD_PACKAGES = "${PN}"
# The Jetson's camera, GPU and VIC nodes belong to video, the DRM render nodes to render (which
# udev's package creates; created here too in case that has not run first).
GROUPADD_PARAM:${PN} = "--system render"
USERADD_PARAM:${PN} = "--system --user-group --groups video,render --home-dir ${localstatedir}/lib/vigil --no-create-home --shell ${base_sbindir}/nologin vigil"

SYSTEMD_SERVICE:${PN} = "vigil.service"
# Installed, not enabled, as by the .deb (docs/decisions/0008): the template needs a device id,
# certificates and cameras first, and a unit enabled with it fails and restarts every 5 s on
# every fresh board. A product layer that installs its configuration sets "enable".
SYSTEMD_AUTO_ENABLE:${PN} ?= "disable"

# The binary differs where TensorRT is linked in.
PACKAGE_ARCH:tegra = "${TEGRA_PKGARCH}"

PACKAGES =+ "${PN}-demo-model"
FILES:${PN}-demo-model += "${datadir}/vigil/models"
CONFFILES:${PN} = "${sysconfdir}/vigil/vigil.toml"

# GStreamer elements are loaded at run time, so nothing finds these from the binary: the ones
# appliance/capture builds pipelines from (the .deb depends on the whole plugin sets).
RDEPENDS:${PN} = "gstreamer1.0-libav \
                  gstreamer1.0-plugins-bad-videoparsersbad \
                  gstreamer1.0-plugins-base-app \
                  gstreamer1.0-plugins-base-playback \
                  gstreamer1.0-plugins-base-typefindfunctions \
                  gstreamer1.0-plugins-base-videoconvertscale \
                  gstreamer1.0-plugins-base-videotestsrc \
                  gstreamer1.0-plugins-good-isomp4 \
                  gstreamer1.0-plugins-good-jpeg \
                  gstreamer1.0-plugins-good-rtp \
                  gstreamer1.0-plugins-good-rtpmanager \
                  gstreamer1.0-plugins-good-rtsp \
                  gstreamer1.0-plugins-good-udp \
                  gstreamer1.0-plugins-good-video4linux2 \
                  gstreamer1.0-plugins-good-videobox \
"
# The CPU backend's library (the prebuilt aarch64 wheel's, as in the .deb).
RDEPENDS:${PN}:append:aarch64 = " vigil-onnxruntime"
RRECOMMENDS:${PN} += "${PN}-demo-model"
# Hardware decode and CSI capture on Jetson (nvv4l2decoder, nvvidconv, nvarguscamerasrc); vigil
# falls back to software decode without them.
RRECOMMENDS:${PN}:append:tegra = " gstreamer1.0-plugins-nvarguscamerasrc gstreamer1.0-plugins-nvvidconv gstreamer1.0-plugins-nvvideo4linux2"
