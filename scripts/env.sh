# Sourced by the other scripts: a project virtual environment in .venv, created and updated on
# demand, with the extras the calling script names in EXTRAS (default "bench": the harness;
# "test" adds pytest, Lightning and transformers). Versions are pinned by constraints.txt.
# torch comes from pip's default index unless TORCH_INDEX_URL names another one: the PyTorch
# wheel index of the build you want, e.g. https://download.pytorch.org/whl/cpu (read when torch is
# first installed into .venv; to switch builds later, remove .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${EXTRAS:-bench}"
# A stamp per extra names the pyproject.toml and constraints.txt it was installed from; a change
# reinstalls. The "test" extra holds "bench" (pyproject.toml), so its stamp serves both.
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"
installed() { [ "$(cat "$venv/.installed-$1" 2>/dev/null)" = "$want" ]; }
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! installed "$extras" && ! { [ "$extras" = bench ] && installed test; }; then
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/constraints.txt")
  if [ -n "${TORCH_INDEX_URL:-}" ] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" torch
  fi
  "${pip[@]}" -e "$root[$extras]"
  echo "$want" > "$venv/.installed-$extras"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
