"""Summarise py-spy raw (collapsed) stacks: samples per thread, and each thread's top
innermost frames (model loading and imports left out). Usage: pyspy_summary.py FILE..."""
import collections
import sys


def short(frame):
    if " (" not in frame:
        return frame
    name, where = frame.split(" (", 1)
    return f"{name} {where.split('/')[-1].rstrip(')')}"


for path in sys.argv[1:]:
    threads, leaves = collections.Counter(), collections.defaultdict(collections.Counter)
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if any("load_model" in f or "importlib" in f for f in frames):
            continue
        thread = frames[0].split(": ")[-1]
        threads[thread] += int(count)
        leaves[thread][" < ".join(short(f) for f in reversed(frames[-2:]))] += int(count)
    print(f"== {path}: samples per thread (startup left out)")
    for thread, n in threads.most_common(8):
        print(f"{n:6d}  {thread}")
        for leaf, m in leaves[thread].most_common(4):
            print(f"        {m:5d}  {leaf[:150]}")
