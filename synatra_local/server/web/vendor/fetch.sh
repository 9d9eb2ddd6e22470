#!/bin/sh
# Re-fetch the vendored browser libraries from the npm registry, exactly the pinned versions, and check them:
# each tarball's sha256, then every file against SHA256SUMS, before anything here is replaced.
# Needs npm (only `npm pack`), tar and sha256sum. Run from anywhere: sh synatra_local/server/web/vendor/fetch.sh
# To upgrade: change a version and its tarball sum below, run with UPDATE=1, review the diff of SHA256SUMS.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/out"

# fetch PACKAGE VERSION TARBALL_SHA256 [PATH_IN_PACKAGE NAME_HERE]...
fetch() {
    name=$1 version=$2 sum=$3
    shift 3
    (cd "$work" && npm pack --silent "$name@$version" >/dev/null)
    tarball="$work/$name-$version.tgz"
    echo "$sum  $tarball" | sha256sum -c --quiet - || { echo "error: $name@$version tarball checksum differs" >&2; exit 1; }
    mkdir "$work/$name"
    tar xzf "$tarball" -C "$work/$name"
    while [ $# -gt 0 ]; do
        cp "$work/$name/package/$1" "$work/out/$2"
        shift 2
    done
}

fetch marked 18.3.0 ac4b23ef5425d83f7aad00a81640d29e5b0fd81a6361a30fa96b4b8bb228ad24 \
    lib/marked.esm.js marked.esm.js LICENSE LICENSE.marked
fetch dompurify 3.5.0 faa5f2bfe2814384b83d6edb4ed66812fbfdb2a654b4d59edd4b12304058ec20 \
    dist/purify.es.mjs purify.es.mjs LICENSE LICENSE.dompurify LICENSE-MPL LICENSE-MPL.dompurify

cd "$work/out"
if [ "${UPDATE:-0}" = 1 ]; then
    sha256sum -- * > SHA256SUMS
else
    cp "$here/SHA256SUMS" .
    sha256sum -c --quiet SHA256SUMS || { echo "error: a fetched file differs from SHA256SUMS" >&2; exit 1; }
fi
cp -- * "$here/"
echo "vendored files fetched and verified in $here"
