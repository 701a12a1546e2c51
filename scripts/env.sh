# Sourced by the quick-start scripts: a project virtual environment, created and filled on first use.
#
# $PYTHON set (e.g. PYTHON=python3 inside the Docker image, where TensorRT lives in the system Python):
# used as it is, nothing installed. Otherwise .venv/ beside the repository gets requirements.txt (the
# pinned, tested set) and this package (editable); a stamp of both files skips the install next time.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  _venv="${EAGER2TRT_VENV:-$_root/.venv}"
  _stamp="$_venv/.eager2trt-installed"
  _want="$(cat "$_root/requirements.txt" "$_root/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ ! -x "$_venv/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    _base="${BASE_PYTHON:-python3}"
    command -v "$_base" >/dev/null 2>&1 || { echo "error: $_base not found; install Python 3.11+ or set BASE_PYTHON" >&2; exit 2; }
    echo "setting up $_venv (first run only: installs requirements.txt, a few minutes)..." >&2
    "$_base" -m venv "$_venv" || { echo "error: could not create a virtual environment at $_venv; install python3-venv or set PYTHON to an interpreter that has the requirements" >&2; exit 2; }
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_root/requirements.txt" \
      || { echo "error: installing requirements.txt into $_venv failed (see pip's message above)" >&2; exit 2; }
    "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$_root" 2>/dev/null \
      || "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$_root" \
      || { echo "error: installing eager2trt into $_venv failed (see pip's message above)" >&2; exit 2; }
    echo "$_want" > "$_stamp"
  fi
  PYTHON="$_venv/bin/python"
fi
export PYTHON
