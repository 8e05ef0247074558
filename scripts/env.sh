# Sourced by the other scripts: a project virtual environment in .venv, created and updated on
# demand, with the extras the calling script names in EXTRAS (default "bench": the harness;
# "test" adds pytest, Lightning and transformers). Versions are pinned by constraints.txt.
# torch comes from pip's default index unless TORCH_INDEX_URL names another one: the PyTorch
# wheel index of the build you want, e.g. https://download.pytorch.org/whl/cpu (read when torch is
# first installed into .venv; to switch builds later, remove .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed"
extras="${EXTRAS:-bench}"
# The stamp names what was installed: a change of pyproject.toml, constraints.txt or the extras reinstalls.
want="$( (cat "$root/pyproject.toml" "$root/constraints.txt"; echo "extras=$extras") | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/constraints.txt")
  if [ -n "${TORCH_INDEX_URL:-}" ] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" torch
  fi
  "${pip[@]}" -e "$root[$extras]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
