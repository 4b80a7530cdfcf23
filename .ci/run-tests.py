#!/usr/bin/env python3
"""The workspace's tests, as `cargo test --workspace --locked` runs them, but two test binaries
at a time (VIGIL_TEST_JOBS to change it).

cargo runs test binaries one after another. Most of the time in ours is spent waiting: vigil
restarting after a kill, a watchdog or start timeout running out, a broker outage lasting its
minute. Run one after another they took 12 minutes of `make test`, with the two cores a third
idle. This script builds every test binary with cargo (`--no-run`), runs them as cargo would
(the package's directory as working directory, CARGO_MANIFEST_DIR set, target/debug/deps on
the library path), the slowest first so that no long one starts last, and prints each one's
output whole when it ends. The doc tests run after, through cargo. Exit status: cargo's (101)
when a test failed.

Extra arguments go to every test binary (for example a test name to filter on).
"""

import json
import os
import subprocess
import sys
import threading
import time

JOBS = int(os.environ.get("VIGIL_TEST_JOBS", "2"))

# Test targets that take a minute or more (measured in `make test` on the 2-core CI machine):
# started first. Order only; a name missing here runs after them.
SLOW_FIRST = ["ota", "ab", "store_forward", "rollout", "capture", "systemd", "fleet", "e2e"]


def build():
    """Builds the test binaries; returns [(label, directory, executable)]."""
    cmd = ["cargo", "test", "--workspace", "--locked", "--no-run", "--message-format=json-render-diagnostics"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(out.returncode)
    found = []
    for line in out.stdout.splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("reason") != "compiler-artifact" or not m["profile"]["test"] or not m.get("executable"):
            continue
        directory = os.path.dirname(m["manifest_path"])
        src = os.path.relpath(m["target"]["src_path"], directory)
        label = f"{m['target']['name']} ({os.path.basename(directory)}/{src})"
        found.append((m["target"]["name"], label, directory, m["executable"]))
    if not found:
        sys.exit("run-tests: cargo built no test binary")

    def order(t):
        name = t[0]
        return (SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST), t[1])

    return [t[1:] for t in sorted(found, key=order)]


def main():
    tests = build()
    args = sys.argv[1:]
    pending = list(tests)
    lock = threading.Lock()
    results = []
    started_at = time.monotonic()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                label, directory, exe = pending.pop(0)
                print(f"run-tests: start {label}", flush=True)
            env = dict(os.environ, CARGO_MANIFEST_DIR=directory)
            deps = os.path.dirname(exe)
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in [deps, os.path.dirname(deps), os.environ.get("LD_LIBRARY_PATH", "")] if p
            )
            t0 = time.monotonic()
            run = subprocess.run([exe, *args], cwd=directory, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace")
            took = time.monotonic() - t0
            with lock:
                print(f"     Running {label} ({exe})\n{run.stdout}", end="", flush=True)
                verdict = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
                print(f"run-tests: {label}: {verdict} in {took:.0f} s", flush=True)
                results.append((label, run.returncode, took))

    threads = [threading.Thread(target=worker) for _ in range(max(1, JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if r[1] != 0]
    print(f"run-tests: {len(results)} test binaries, {JOBS} at a time, in {time.monotonic() - started_at:.0f} s; "
          f"the slowest: " + ", ".join(f"{label.split(' ')[0]} {took:.0f} s" for label, _, took in
                                        sorted(results, key=lambda r: -r[2])[:5]), flush=True)
    doc = subprocess.run(["cargo", "test", "--workspace", "--locked", "--doc", *args])
    if failed:
        for label, code, _ in failed:
            print(f"run-tests: FAILED: {label} (exit {code})", flush=True)
        sys.exit(101)
    sys.exit(doc.returncode)


if __name__ == "__main__":
    main()
