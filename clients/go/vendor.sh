#!/usr/bin/env bash
# Assemble vendor/ for module-mode builds with no module proxy: the packages this module imports,
# copied from Debian's packaged Go sources (/usr/share/gocode, apt: golang-github-shopify-sarama-dev),
# and vendor/modules.txt at the versions go.mod requires. `make test-go` runs it, then builds and
# tests with -mod=vendor (and, separately, in GOPATH mode). vendor/ is a build output (gitignored).
set -euo pipefail
cd "$(dirname "$0")"
SRC=${GOCODE:-/usr/share/gocode/src}
rm -rf vendor && mkdir -p vendor
# module path, version (as go.mod requires it), its packages used here
MODULES="
github.com/DataDog/zstd v1.4.5 github.com/DataDog/zstd
github.com/Shopify/sarama v1.22.1 github.com/Shopify/sarama
github.com/davecgh/go-spew v1.1.1 github.com/davecgh/go-spew/spew
github.com/eapache/go-resiliency v1.1.0 github.com/eapache/go-resiliency/breaker
github.com/eapache/go-xerial-snappy v0.0.0-20180814174437-776d5712da21 github.com/eapache/go-xerial-snappy
github.com/eapache/queue v1.1.0 github.com/eapache/queue
github.com/golang/snappy v0.0.2 github.com/golang/snappy
github.com/pierrec/lz4 v2.5.2+incompatible github.com/pierrec/lz4,github.com/pierrec/lz4/internal/xxh32
github.com/rcrowley/go-metrics v0.0.0-20180125231941-8732c616f529 github.com/rcrowley/go-metrics
golang.org/x/net v0.7.0 golang.org/x/net/internal/socks,golang.org/x/net/proxy
"
echo "$MODULES" | while read -r mod ver pkgs; do
  [ -n "$mod" ] || continue
  echo "# $mod $ver" >> vendor/modules.txt
  echo "## explicit" >> vendor/modules.txt
  for p in ${pkgs//,/ }; do
    [ -d "$SRC/$p" ] || { echo "vendor.sh: $SRC/$p is missing (install golang-github-shopify-sarama-dev)" >&2; exit 1; }
    mkdir -p "vendor/$p"
    # the package's own files (not its sub-packages, not tests): what a vendored build reads
    find -L "$SRC/$p" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name '*.c' -o -name '*.h' \) ! -name '*_test.go' \
      -exec cp {} "vendor/$p/" \;
    echo "$p" >> vendor/modules.txt
  done
done
echo "vendor/: $(grep -c '^# ' vendor/modules.txt) modules from $SRC"
