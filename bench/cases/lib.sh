# Shared by the bench recipes (sourced, not a case: the bench runs only directories here).

# layer_tar DIR NAME TAR: writes TAR, a reproducible layer tar of DIR/NAME (sorted names, mtimes
# clamped to SOURCE_DATE_EPOCH, root-owned), atomically (a partial file never looks done).
layer_tar() {
  tar --sort=name --format=gnu --mtime=@"${SOURCE_DATE_EPOCH:?}" --clamp-mtime \
    --owner=0 --group=0 --numeric-owner -C "$1" -cf "$3.partial" "$2"
  mv "$3.partial" "$3"
}

# update_case OUT READ: the common case shape, debian:v1 under the recipe's app layer, v1 then v2
# (`build v1` / `build v2`, defined by the recipe, print the app layer tars), reading READ.
update_case() {
  local out=$1 read=$2 app1 app2
  app1=$(build v1)
  app2=$(build v2)
  printf '%s\n%s\n' "${BENCH_DEBIAN_V1_TAR:?}" "$app1" > "$out/v1.layers"
  printf '%s\n%s\n' "$BENCH_DEBIAN_V1_TAR" "$app2" > "$out/v2.layers"
  echo "$read" > "$out/read"
  echo update > "$out/mode"
}
