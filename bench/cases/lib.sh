# Shared by the bench recipes (sourced, not a case: the bench runs only directories here).

# layer_tar DIR NAME TAR: writes TAR, a reproducible layer tar of DIR/NAME (sorted names, mtimes
# clamped to SOURCE_DATE_EPOCH, root-owned), atomically (a partial file never looks done).
layer_tar() {
  tar --sort=name --format=gnu --mtime=@"${SOURCE_DATE_EPOCH:?}" --clamp-mtime \
    --owner=0 --group=0 --numeric-owner -C "$1" -cf "$3.partial" "$2"
  mv "$3.partial" "$3"
}
