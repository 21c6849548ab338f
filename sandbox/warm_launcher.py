"""The warm training launcher, run inside the training jail as `python warm_launcher.py SCRIPT
MODULE...` (standard library only; sandbox/warm_start.py explains the protocol).

It imports MODULE... with the run directory off sys.path (an agent's file can never stand in
for torch), makes the CUDA context when AR_DEVICE names a GPU and torch is among them, writes
the ready line, waits for "go" on stdin, then runs SCRIPT as `__main__` with the sys.argv and
sys.path `python SCRIPT` would have given it.
"""

import importlib
import os
import runpy
import sys
import time

READY_MARKER = "[autoresearch] warm start ready"  # sandbox/warm_start.py reads it


def main() -> None:
    began = time.perf_counter()
    script, modules = sys.argv[1], sys.argv[2:]
    cwd = os.getcwd()
    here = os.path.dirname(os.path.abspath(__file__))
    kept = [p for p in sys.path if p not in ("", ".", cwd, here)]
    sys.path[:] = kept
    for name in modules:
        importlib.import_module(name)
    device = os.environ.get("AR_DEVICE", "cpu")
    if device.startswith("cuda") and "torch" in modules:
        import torch

        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    sys.path[:] = [cwd, *kept]
    sys.stdout.write(f"{READY_MARKER} in {time.perf_counter() - began:.2f} s\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        sys.exit(75)
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
