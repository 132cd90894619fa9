"""v2 of the rebuilt-binary case's program: a new version string and a changed function, as a
routine fix would make. Edits main.rs in place."""
import sys

path = sys.argv[1]
src = open(path).read()
src = src.replace('const VERSION: &str = "1.4.0";', 'const VERSION: &str = "1.4.1";')
old = "    config.limits.get(key).copied().unwrap_or(10).max(1)\n"
new = ("    let base = config.limits.get(key).copied().unwrap_or(10);\n"
       "    // Burst allowance for the health check, which load balancers call often.\n"
       "    if key == \"health\" { base.saturating_mul(4).max(50) } else { base.max(1) }\n")
assert old in src, "bump.py: the function to change is gone"
src = src.replace(old, new)
open(path, "w").write(src)
