#!/usr/bin/env bash
# Installs the offline Fashion-MNIST (Debian package dataset-fashion-mnist) when it is missing and apt is usable.
# Never fatal: the tests use synthetic data, and the CLI says how to get a dataset it cannot find.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -f "$dir/train-images-idx3-ubyte" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "get-data: installing dataset-fashion-mnist with apt-get" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
        || echo "get-data: apt-get could not install dataset-fashion-mnist; set data.root to a Fashion-MNIST folder" >&2
else
    echo "get-data: Fashion-MNIST not found in $dir and apt-get is unavailable; set data.root or run online" >&2
fi
exit 0
