"""Time one whole command (an install, the suite, CI, the demo) and record it in a JSON file under docs/figures/
beside the others already there, with the command, the machine, the date, its exit status, the size of a folder it
made (`--du`) and pytest's summary line where it printed one. Its output passes through.

    python bench/wallclock.py install --du .venv --json docs/figures/wallclock.json -- make install
    python bench/wallclock.py ci --json docs/figures/wallclock.json -- bash .ci/run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

SUMMARY = re.compile(r"^(?:=+ )?(?P<line>\d+ (?:passed|failed)[^=\n]* in [\d.]+s(?: \([\d:]+\))?)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="its key in the file")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--du", type=Path, help="a folder whose size to record afterwards")
    if "--" not in sys.argv:
        ap.error("give the command after --")
    split = sys.argv.index("--")
    a, command = ap.parse_args(sys.argv[1:split]), sys.argv[split + 1 :]
    began = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    summary = None
    for line in proc.stdout:
        sys.stdout.write(line)
        if found := SUMMARY.search(line):
            summary = found["line"]
    code = proc.wait()
    seconds = time.time() - began
    record = {
        "command": shlex.join(command),
        "seconds": round(seconds, 1),
        "exit": code,
        "pytest": summary,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if a.du:
        du = subprocess.run(["du", "-sb", str(a.du)], capture_output=True, text=True, check=True).stdout
        record["du_bytes"] = int(du.split()[0])
    doc = json.loads(a.json.read_text()) if a.json.exists() else {}
    doc[a.name] = record
    a.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{a.name}: {seconds:.0f} s, exit {code}" + (f", {summary}" if summary else ""))
    sys.exit(code)


if __name__ == "__main__":
    main()
