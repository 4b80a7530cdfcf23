#!/usr/bin/env bash
# The Yocto layer's offline checks (yocto/meta-vigil; no bitbake, no network, a few seconds):
#   1. crates: vigil-crates.inc is what .ci/crates-inc.py makes of Cargo.lock;
#   2. lint: oelint-adv (the version `make setup` pins in .venv) finds nothing in the layer's
#      recipes, appends, includes and layer.conf, each dynamic layer linted as its own setup;
#   3. rust: the Rust the kas file's mixin commit ships (VIGIL_MIXIN_RUST_VERSION) is at least the
#      workspace's rust-version, and the recipe's parse-time minimum is that rust-version;
#   4. release: layer.conf's LAYERSERIES_COMPAT names the release the kas file builds
#      (openembedded-core's branch), and every other layer is pinned to that release's branch;
#   5. version: the recipe's PV is the workspace version.
# Parsing, fetching, building and booting the image need a build host (yocto/meta-vigil/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

layer=yocto/meta-vigil
kas=yocto/kas/vigil-jetson-orin-nano.yml
recipe=$layer/recipes-vigil/vigil/vigil_git.bb
inc=$layer/recipes-vigil/vigil/vigil-crates.inc
oelint=.venv/bin/oelint-adv

fail() { echo "check-yocto: FAIL: $*" >&2; exit 1; }
ok() { echo "check-yocto: ok: $*"; }

# 1. The crates include.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.ci/crates-inc.py >"$tmp/crates.inc" || fail "crates: .ci/crates-inc.py failed"
if ! diff -u "$inc" "$tmp/crates.inc" >"$tmp/crates.diff"; then
  head -n 40 "$tmp/crates.diff" >&2
  fail "crates: $inc is not what Cargo.lock gives (above); run" \
       ".ci/crates-inc.py > $inc and commit it"
fi
ok "crates: $inc matches Cargo.lock ($(grep -c '^    crate://' "$inc") crates)"

# 2. oelint-adv. Findings in the generated include that its format implies (SRC_URI += " \ ...)
# are dropped here: the file must stay what bitbake writes. Anything else fails.
[[ -x $oelint ]] || fail "lint: $oelint is missing; run make setup"
export OELINT_CONFIG=$PWD/$layer/.oelint.cfg
generated='/vigil-crates\.inc:[0-9]+:[a-z]+:oelint\.vars\.(inconspaces|notneededspace):'
lint() { # files... → prints the findings (a crash counts as one), one per line
  local out rc=0
  out=$("$oelint" --quiet --relpaths "$@" 2>&1) || rc=$?
  if [[ $rc != 0 && $rc != 1 ]]; then printf '%s\noelint-adv exited %s\n' "$out" "$rc"; return; fi
  grep -Ev "$generated" <<<"$out" | grep -v '^$' || true
}
base_recipes() { # bbappends... → the layer's recipes they append to
  local a name
  for a in "$@"; do
    name=$(basename "$a" .bbappend); name=${name%%_*}
    find "$layer/recipes-vigil" -name "$name.bb" -o -name "${name}_*.bb"
  done
}
main_files=$(find "$layer" -path "$layer/dynamic-layers" -prune -o \
  \( -name '*.bb' -o -name '*.bbappend' -o -name '*.inc' -o -name '*.bbclass' -o -name '*.conf' \) -print | sort)
findings=$(lint $main_files)$'\n'
linted=$(wc -w <<<"$main_files")
for dyn in "$layer"/dynamic-layers/*/; do
  files=$(find "$dyn" \( -name '*.bb' -o -name '*.bbappend' -o -name '*.inc' \) | sort)
  [[ -n $files ]] || continue
  # shellcheck disable=SC2046 # word splitting of file lists is intended (no spaces in names)
  findings+=$(lint $files $(base_recipes $(grep '\.bbappend$' <<<"$files") | sort -u))$'\n'
  linted=$((linted + $(wc -w <<<"$files")))
done
findings=$(grep -v '^$' <<<"$findings" || true)
[[ -z $findings ]] || { echo "$findings" >&2; fail "lint: oelint-adv findings (above)"; }
ok "lint: oelint-adv $("$oelint" --version 2>&1 | awk '{print $NF}'), $linted files, no findings"

# 3. Rust. Versions compare numerically, a missing part counting as 0 (1.92 = 1.92.0).
workspace_rust=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["rust-version"])')
mixin_rust=$(sed -n 's/^ *VIGIL_MIXIN_RUST_VERSION = "\([^"]*\)".*/\1/p' "$kas")
recipe_rust=$(sed -n 's/^VIGIL_RUST_MIN = "\([^"]*\)".*/\1/p' "$recipe")
[[ -n $mixin_rust ]] || fail "rust: no VIGIL_MIXIN_RUST_VERSION in $kas"
version_ge() { python3 -c 'import sys; v = [[int(x) for x in a.split(".")] + [0] * 3 for a in sys.argv[1:]]; sys.exit(v[0][:3] < v[1][:3])' "$1" "$2"; }
version_ge "$mixin_rust" "$workspace_rust" ||
  fail "rust: the workspace needs Rust $workspace_rust (Cargo.toml rust-version), the meta-lts-mixins" \
       "commit in $kas ships $mixin_rust: pin a newer scarthgap/rust commit and record its RUSTVERSION" \
       "(or keep the workspace's rust-version where it was)"
[[ $recipe_rust == "$workspace_rust" ]] ||
  fail "rust: VIGIL_RUST_MIN in $recipe is '$recipe_rust', the workspace's rust-version is $workspace_rust"
ok "rust: the workspace needs $workspace_rust, the pinned mixin ships $mixin_rust"

# 4. The release. The kas file's repos: two-space names, four-space keys.
repo_key() { # repo key → value
  awk -v repo="  $1:" -v key="$2" '
    $0 == repo { inrepo = 1; next }
    inrepo && /^  [^ #]/ { inrepo = 0 }
    inrepo && $1 == key ":" { v = $2; gsub(/"/, "", v); print v; exit }' "$kas"
}
release=$(repo_key openembedded-core branch)
[[ -n $release ]] || fail "release: no branch for openembedded-core in $kas"
compat=$(sed -n 's/^LAYERSERIES_COMPAT_vigil = "\([^"]*\)".*/\1/p' "$layer/conf/layer.conf")
[[ " $compat " == *" $release "* ]] ||
  fail "release: $kas builds $release, $layer/conf/layer.conf has LAYERSERIES_COMPAT_vigil = \"$compat\""
for repo in meta-tegra meta-clang meta-lts-mixins; do
  branch=$(repo_key "$repo" branch)
  [[ $branch == "$release" || $branch == "$release/rust" ]] ||
    fail "release: $repo is on branch '$branch' in $kas, not $release's"
done
[[ $(repo_key meta-lts-mixins branch) == "$release/rust" ]] || fail "release: meta-lts-mixins is not on $release/rust"
ok "release: $release (LAYERSERIES_COMPAT_vigil \"$compat\"; meta-tegra, meta-clang, meta-lts-mixins on its branches)"

# 5. The version.
workspace_version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
recipe_pv=$(sed -n 's/^PV = "\([^"+]*\)\(+git\)\{0,1\}".*/\1/p' "$recipe")
[[ $recipe_pv == "$workspace_version" ]] ||
  fail "version: PV in $recipe is '$recipe_pv', the workspace is $workspace_version"
ok "version: PV $recipe_pv+git"

# Not a failure: whether a git build at the recipe's default VIGIL_SRCREV would fetch the crates
# listed (its Cargo.lock must be the one the include was made from). Releases bump it.
srcrev=$(sed -n 's/^VIGIL_SRCREV ?= "\([0-9a-f]*\)".*/\1/p' "$recipe")
if [[ -n $srcrev ]] && git cat-file -e "$srcrev:Cargo.lock" 2>/dev/null; then
  if git show "$srcrev:Cargo.lock" | .ci/crates-inc.py - | cmp -s - "$inc"; then
    echo "check-yocto: note: VIGIL_SRCREV ${srcrev:0:12} has the Cargo.lock the include lists"
  else
    echo "check-yocto: note: VIGIL_SRCREV ${srcrev:0:12} has another Cargo.lock than the include lists:" \
         "a build from git (not this checkout) needs VIGIL_SRCREV moved to a commit with this one"
  fi
fi
