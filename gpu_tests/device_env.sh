# Sourced by the *_on_device.sh scripts (from the repository root): the offline environment every
# run on the GPU machine uses, and one way to install wheels copied over in .whl/ folders.
# SITE (default /tmp/site) holds the installed wheels and survives between runs while the machine stays up.
SITE=${SITE:-/tmp/site}
mkdir -p "$SITE"
shopt -s nullglob

# install_wheels TARGET WHEEL...: install the given wheels (no index, no dependencies) into TARGET.
install_wheels() {
  local target=$1
  shift
  [ $# -gt 0 ] || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  GX_ANALYTICS_ENABLED=false CAI_BOOTSTRAP_CACHE=${CAI_BOOTSTRAP_CACHE:-/tmp/cai-cache}
