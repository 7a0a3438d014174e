#!/usr/bin/env python3
"""Self instructions per source file from a callgrind output file (inlined code counted in the
file it was written in): python3 benches/callgrind_by_file.py callgrind.out.N REQUESTS [ROWS]."""
import sys, re, collections
# Self Ir per source file (inlined code attributed to its own file), from a callgrind out file.
names = {}
def name(kind, rest):
    m = re.match(r'\((\d+)\)(?: (.*))?', rest)
    if m:
        key=(kind,m.group(1))
        if m.group(2): names[key]=m.group(2)
        return names.get(key, rest)
    return rest
cost = collections.Counter()
cur = None; skip = False
for line in open(sys.argv[1]):
    line=line.rstrip('\n')
    if line.startswith(('fl=','fi=','fe=')):
        cur = name('fl', line[3:]); continue
    if line.startswith('fn='):
        continue
    if line.startswith(('cfl=','cfi=','cfn=','cob=','ob=')):
        if line.startswith(('cfl=','cfi=')): name('fl', line[4:])
        continue
    if line.startswith('calls='):
        skip = True; continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        parts=line.split()
        if len(parts)>=2:
            if skip: skip=False; continue
            cost[cur]+=int(parts[1])
total=sum(cost.values())
n=int(sys.argv[2]) if len(sys.argv)>2 else 1
def short(f):
    f=re.sub(r'/root/.cargo/registry/src/index.crates.io-[0-9a-f]+/','',f or '?')
    f=re.sub(r'/rustc/[0-9a-f]+/','std:',f)
    return f
bycrate=collections.Counter()
for f,c in cost.items():
    s=short(f)
    crate = s.split('/')[0] if not s.startswith('/work') else 'OURS:'+'/'.join(s.split('/')[-2:])
    if s.startswith('std:'): crate='std:'+'/'.join(s.split('/')[2:4])
    if s.startswith('./') or s.startswith('/build'): crate='libc:'+s.split('/')[-1]
    bycrate[crate]+=c
print(f"total {total} Ir, {total/n:.0f} per request")
for k,c in bycrate.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 40):
    print(f"{c/n:10.0f}  {100*c/total:5.1f}%  {k}")
