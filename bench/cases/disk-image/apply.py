"""Applies the difference between two extracted rootfs trees (OLD -> NEW) to a mounted
filesystem holding OLD, in place: changed and new files are rewritten, removed ones deleted.
Used by the disk-image bench case to update a disk image the way a package upgrade run inside
the VM would. Usage: apply.py OLD NEW TARGET"""
import filecmp
import os
import shutil
import sys

old, new, target = sys.argv[1:4]
changed = removed = 0


def same(a, b):
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if os.path.islink(a):
        return os.readlink(a) == os.readlink(b)
    if os.path.isfile(a):
        return filecmp.cmp(a, b, shallow=False)
    return True


for root, dirs, files in os.walk(new):
    rel = os.path.relpath(root, new)
    for name in dirs + files:
        n = os.path.join(root, name)
        o = os.path.join(old, rel, name)
        t = os.path.join(target, rel, name)
        if os.path.lexists(o) and same(o, n):
            continue
        if os.path.isdir(n) and not os.path.islink(n):
            os.makedirs(t, exist_ok=True)
            shutil.copystat(n, t)
        else:
            if os.path.lexists(t):
                if os.path.isdir(t) and not os.path.islink(t):
                    shutil.rmtree(t)
                else:
                    os.unlink(t)
            if os.path.islink(n):
                os.symlink(os.readlink(n), t)
            else:
                shutil.copy2(n, t)
            changed += 1
        st = os.lstat(n)
        os.chown(t, st.st_uid, st.st_gid, follow_symlinks=False)

for root, dirs, files in os.walk(old, topdown=False):
    rel = os.path.relpath(root, old)
    for name in files + dirs:
        if not os.path.lexists(os.path.join(new, rel, name)):
            t = os.path.join(target, rel, name)
            if os.path.isdir(t) and not os.path.islink(t):
                shutil.rmtree(t)
            elif os.path.lexists(t):
                os.unlink(t)
            removed += 1

print(f"apply.py: {changed} entries written, {removed} removed")
