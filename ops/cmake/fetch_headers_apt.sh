#!/bin/sh
# Fetch a header folder from a Debian -dev package (suite sid) without touching /etc/apt: a scratch APT configuration
# (own state, lists, sources) is built in a temp dir, pointed to by APT_CONFIG. Only the package's usr/include/SUBDIR
# is kept (headers are the same for every architecture).
# Usage: fetch_headers_apt.sh PACKAGE SUBDIR CHECK_FILE DEST_DIR   -> DEST_DIR/include/SUBDIR/..., CHECK_FILE relative
#        to include/ (e.g. libonnxruntime-dev onnxruntime onnxruntime/onnxruntime_cxx_api.h, libhwy-dev hwy hwy/highway.h)
set -eu
package=$1
subdir=$2
check=$3
dest=$4
command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found" >&2; exit 3; }
command -v dpkg-deb >/dev/null 2>&1 || { echo "dpkg-deb not found" >&2; exit 3; }

# The machine's own Debian mirror: the first URIs:/deb line that names a debian archive.
mirror=""
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -r "$f" ] || continue
  m=$(sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]]*$/\1/p' \
             -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\2/p' "$f" | head -n1)
  if [ -n "$m" ]; then mirror=$m; break; fi
done
[ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt sources" >&2; exit 3; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "Debian archive keyring $keyring not found" >&2; exit 3; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/cache" "$tmp/prefs.d"
echo "deb [signed-by=$keyring] $mirror sid main" > "$tmp/sources.list"
cat > "$tmp/apt.conf" <<CONF
Dir::State "$tmp";
Dir::State::Lists "$tmp/lists";
Dir::State::status "/dev/null";
Dir::Etc::SourceList "$tmp/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Preferences "$tmp/prefs";
Dir::Etc::PreferencesParts "$tmp/prefs.d";
Dir::Cache "$tmp/cache";
Dir::Cache::archives "$tmp/archives";
APT::Sandbox::User "root";
Acquire::Languages "none";
CONF
export APT_CONFIG="$tmp/apt.conf"
apt-get -q update -o Debug::NoLocking=1 >"$tmp/update.log" 2>&1 || { cat "$tmp/update.log" >&2; exit 4; }
(cd "$tmp" && apt-get -q download -o Debug::NoLocking=1 "$package" >"$tmp/download.log" 2>&1) \
  || { cat "$tmp/download.log" >&2; exit 4; }
deb=$(ls "$tmp"/"$package"_*.deb | head -n1)
dpkg-deb -x "$deb" "$tmp/x"
[ -f "$tmp/x/usr/include/$check" ] || { echo "$package has no usr/include/$check" >&2; exit 5; }
mkdir -p "$dest/include"
rm -rf "$dest/include/$subdir"
cp -r "$tmp/x/usr/include/$subdir" "$dest/include/$subdir"
basename "$deb" > "$dest/SOURCE"
echo "fetched $(basename "$deb") from $mirror"
