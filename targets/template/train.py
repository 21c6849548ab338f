"""
The template's trainer: the ONE file an agent edits. Fits y = f(x) on [-1, 1] from noisy samples.

COPY THIS FILE FOR YOUR OWN TARGET and replace the model and the loop; keep the contract part
(reading the environment, stopping inside the budget, writing the artifact into AR_OUT_DIR).
This file is what agents change: make it a plain, readable baseline with its constants at the
top, good enough to be a fair start and clearly improvable.

The contract with the server, all from the environment (docs/targets.md):
  AR_BUDGET_SECONDS  the budget; the runner kills the process at budget + grace
  AR_BUDGET_KIND     "wall" (seconds on the clock) or "cpu" (CPU seconds of this process)
  AR_SEED            the seed: seed EVERYTHING random from it (the server pairs seeds across runs)
  AR_DATA_DIR        the prepared data: only the train_data subfolders (train/x.npy, train/y.npy)
  AR_OUT_DIR         where the artifact goes (target.toml's `artifact`: model.json)
  AR_DEVICE          "cpu" or "cuda" (ignored here: numpy runs on the CPU)
  AR_SCALE           a model-size multiplier for promotion runs (1 = default)
Anything printed is logged for the agent to read; nothing printed is ever trusted as a score.

The model: f(x) = sum_k c_k T_k(x), a Chebyshev series of degree DEGREE, fitted by minibatch
gradient descent on the mean squared error. The artifact is a JSON file with a fixed schema,
{"format": "template-chebyshev/1", "coefficients": [c_0, ..., c_D]}, that evaluate.py checks and
evaluates itself (numpy's chebval): an artifact is data, never code.
"""

import json
import os
import time

PROCESS_START = time.time()
# CPU seconds are counted from here too: with a warm start the runner's clock starts as this
# file starts, after the warm imports (whose CPU time is not the run's).
CPU_START = time.process_time()

import numpy as np  # noqa: E402

# ---------------------------------------------------------------- hyperparameters
SCALE = max(0.25, float(os.environ.get("AR_SCALE", "1")))
DEGREE = min(63, max(0, round(4 * SCALE)))  # the series' degree (evaluate.py allows up to 63)
STEPS = 500  # gradient steps (training also stops at the budget)
BATCH_SIZE = 32
LEARNING_RATE = 0.05
MOMENTUM = 0.9
RESERVE_SECONDS = 0.2  # stop this long before the budget ends, to write the artifact

# ---------------------------------------------------------------- the contract
BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "4"))
BUDGET_KIND = os.environ.get("AR_BUDGET_KIND", "wall")
SEED = int(os.environ.get("AR_SEED", "0"))
DATA_DIR = os.environ.get("AR_DATA_DIR", "data")
OUT_DIR = os.environ.get("AR_OUT_DIR", ".")
rng = np.random.default_rng(SEED)  # the only source of randomness below


def budget_used() -> float:
    """Seconds of the budget spent, counted the way the runner counts them."""
    return time.process_time() - CPU_START if BUDGET_KIND == "cpu" else time.time() - PROCESS_START


# ---------------------------------------------------------------- data
x = np.load(os.path.join(DATA_DIR, "train", "x.npy"))
y = np.load(os.path.join(DATA_DIR, "train", "y.npy"))
print(f"train: {len(x)} examples, degree {DEGREE}", flush=True)


def features(x: np.ndarray) -> np.ndarray:
    """[n, DEGREE + 1]: T_0(x) .. T_DEGREE(x), the Chebyshev polynomials (what chebval sums)."""
    return np.polynomial.chebyshev.chebvander(x, DEGREE)


# ---------------------------------------------------------------- training
coefficients = rng.normal(0.0, 0.1, DEGREE + 1)
velocity = np.zeros_like(coefficients)
step = 0
for step in range(1, STEPS + 1):
    if budget_used() >= BUDGET_SECONDS - RESERVE_SECONDS:
        print(f"budget reached at step {step}: stopping", flush=True)
        break
    batch = rng.integers(0, len(x), BATCH_SIZE)
    phi = features(x[batch])
    error = phi @ coefficients - y[batch]
    gradient = 2.0 * phi.T @ error / BATCH_SIZE
    velocity = MOMENTUM * velocity - LEARNING_RATE * gradient
    coefficients = coefficients + velocity
    if step % 100 == 0:
        train_mse = float(np.mean((features(x) @ coefficients - y) ** 2))
        print(
            f"step {step}  train mse {train_mse:.5f}  budget used {budget_used():.2f} s", flush=True
        )

# ---------------------------------------------------------------- the artifact
# Write it whole or not at all: a half-written file is just an invalid artifact, but a rename
# makes the point for targets whose artifacts are large.
os.makedirs(OUT_DIR, exist_ok=True)
artifact = {"format": "template-chebyshev/1", "coefficients": [float(c) for c in coefficients]}
tmp = os.path.join(OUT_DIR, "model.json.tmp")
with open(tmp, "w") as f:
    json.dump(artifact, f)
os.replace(tmp, os.path.join(OUT_DIR, "model.json"))
print(f"saved model.json after {step} steps; budget used {budget_used():.2f} s", flush=True)
