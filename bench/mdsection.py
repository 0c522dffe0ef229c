"""BENCHMARKS.md is shared: bench/run.sh (report.py) writes the top, other scripts each own a
block between two HTML comment markers. This replaces one block and keeps everything else."""


def write_section(path, begin, end, text):
    """Puts `text` (which starts with `begin` and ends with `end`) in place of the old block
    of `path`, or appends it when there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except OSError:
        old = "# Benchmarks\n"
    s, e = old.find(begin), old.find(end)
    new = (old[:s] + text + old[e + len(end):] if s != -1 and e != -1
           else old.rstrip("\n") + "\n\n" + text + "\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
