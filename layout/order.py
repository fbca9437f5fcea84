"""Prints the functions of the lanyard binary that callgrind saw run, for the linker's
--symbol-ordering-file: first those run on the agent's own (local authority), most instructions
first, then those run only when joined to a SPIRE server (outputs under a directory named
`*-spire`), so an agent on its own finds everything it runs at the start of the list.

usage: python3 layout/order.py CALLGRIND_OUT...
"""
import collections
import re
import sys


def self_costs(path):
    """Instructions per function of the `lanyard` object in one callgrind output."""
    cost = collections.Counter()
    names, objects = {}, {}
    obj = fn = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        kind, _, rest = line.partition("=")
        if kind in ("ob", "fn", "cob", "cfn"):
            m = re.match(r"\((\d+)\)(?: (.*))?", rest)
            table = objects if kind in ("ob", "cob") else names
            if m and m.group(2):
                table[m.group(1)] = m.group(2)
            if kind == "ob":
                obj = objects.get(m.group(1)) if m else rest
            elif kind == "fn":
                fn = names.get(m.group(1)) if m else rest
        elif kind == "calls":
            after_calls = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2 and obj and obj.endswith("/lanyard") and fn:
                # callgrind marks recursion levels with 'N; the symbol is the same.
                cost[re.sub(r"'\d+$", "", fn)] += int(parts[1])
    return cost


local, joined = collections.Counter(), collections.Counter()
for path in sys.argv[1:]:
    spire = any(part.endswith("-spire") for part in path.split("/")[:-1])
    (joined if spire else local).update(self_costs(path))
for name, _ in local.most_common():
    print(name)
for name, _ in joined.most_common():
    if name not in local:
        print(name)
