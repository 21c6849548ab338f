"""
The baseline digits classifier: the ONE file an agent edits.

The task: classify 8x8 images of handwritten digits (0..9). What is fixed (not in this file,
not editable): the data and its secret split (prepare.py), the evaluation and its metric,
accuracy on the val split, higher is better, ties broken by mean log-loss (evaluate.py, run by
the server in its own jail), the clock, the seed and the record. This file trains within the
time budget it is given and saves the model; it never computes the official metric. Anything
it prints is logged, nothing it prints is trusted.

The contract with the server, all from the environment:
  AR_BUDGET_SECONDS  training budget in seconds; the runner stops this process at budget + grace
  AR_BUDGET_KIND     "wall" (seconds on the clock) or "cpu" (CPU seconds of this process)
  AR_DEVICE          "cpu" or "cuda"
  AR_SEED            the seed: owned by the server (paired comparisons), do not replace it
  AR_DATA_DIR        train/x.npy (uint8 [n, 64], pixels 0..16) and train/y.npy (uint8 [n],
                     labels 0..9), read-only; no val split here
  AR_OUT_DIR         where the model goes: model.npz (see "export" at the bottom)
  AR_SCALE           model size multiplier for promotion runs (1 = default): width * scale

The artifact is not code. model.npz holds a JSON layer spec and float32 weight arrays; the
evaluator checks them against a whitelist of ops (linear, relu, gelu, tanh, sigmoid, silu,
layernorm, residual) and computes the forward pass itself, in numpy, on inputs x / 16 (pixels
scaled to 0..1, exactly as `load_split` below does). A model that needs another op cannot be
exported; one that uses only these ops can be any depth or width (the file is capped at 64 MiB).

The baseline is deliberately plain: a 64 -> 64 -> 10 MLP, plain SGD, a fixed number of epochs.
"""

import json
import os
import time

PROCESS_START = time.time()
# CPU seconds are counted from here too: with a warm start the runner's clock starts as this
# file starts, after the warm imports (whose CPU time is not the run's).
CPU_START = time.process_time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------- hyperparameters
SCALE = max(0.25, float(os.environ.get("AR_SCALE", "1")))
HIDDEN = max(1, round(64 * SCALE))  # width of the hidden layer
EPOCHS = 10  # passes over the train split (training also stops at the budget, see below)
BATCH_SIZE = 32
LEARNING_RATE = 0.05  # plain SGD
MOMENTUM = 0.0
WEIGHT_DECAY = 0.0
THREADS = 1  # CPU threads: the model is tiny, more threads only wait on each other
# Stop training this long before the budget ends, to leave time for the export.
EXPORT_RESERVE_SECONDS = 0.3

# ---------------------------------------------------------------- the contract
BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "4"))
BUDGET_KIND = os.environ.get("AR_BUDGET_KIND", "wall")
SEED = int(os.environ.get("AR_SEED", "0"))
DEVICE = os.environ.get("AR_DEVICE", "cpu")
DATA_DIR = os.environ.get("AR_DATA_DIR", "data")
OUT_DIR = os.environ.get("AR_OUT_DIR", ".")

torch.set_num_threads(THREADS)
torch.manual_seed(SEED)
generator = torch.Generator().manual_seed(SEED)


def budget_used() -> float:
    """Seconds of the budget spent so far, counted the way the runner counts them."""
    if BUDGET_KIND == "cpu":
        return time.process_time() - CPU_START
    return time.time() - PROCESS_START


# ---------------------------------------------------------------- data
def load_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images scaled to 0..1 (float32 [n, 64], what the evaluator feeds the model) and labels."""
    x = np.load(os.path.join(DATA_DIR, name, "x.npy")).astype(np.float32) / 16.0
    y = np.load(os.path.join(DATA_DIR, name, "y.npy")).astype(np.int64)
    return torch.from_numpy(x).to(DEVICE), torch.from_numpy(y).to(DEVICE)


x_train, y_train = load_split("train")
print(f"train: {len(y_train)} examples, device {DEVICE}, hidden {HIDDEN}", flush=True)

# ---------------------------------------------------------------- model
model = nn.Sequential(
    nn.Linear(64, HIDDEN),
    nn.ReLU(),
    nn.Linear(HIDDEN, 10),
).to(DEVICE)
optimizer = torch.optim.SGD(
    model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
)

# ---------------------------------------------------------------- training
deadline = BUDGET_SECONDS - EXPORT_RESERVE_SECONDS
steps, stopped_early = 0, False
for epoch in range(EPOCHS):
    order = torch.randperm(len(y_train), generator=generator).to(DEVICE)
    total_loss = 0.0
    for start in range(0, len(order), BATCH_SIZE):
        if budget_used() >= deadline:
            stopped_early = True
            break
        batch = order[start : start + BATCH_SIZE]
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
        steps += 1
    if stopped_early:
        print(f"budget reached in epoch {epoch + 1}: stopping", flush=True)
        break
    print(
        f"epoch {epoch + 1}/{EPOCHS}  train loss {total_loss / len(y_train):.4f}  "
        f"budget used {budget_used():.2f}/{BUDGET_SECONDS:g} s",
        flush=True,
    )


# ---------------------------------------------------------------- export
# The evaluator reads only this: a JSON spec of layers (ops from its whitelist) naming float32
# arrays stored beside it. Linear weights are [out, in] as in torch; layernorm has "eps".
def export(model: nn.Sequential, path: str) -> None:
    layers, arrays = [], {}
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            arrays[f"w{i}"] = module.weight.detach().cpu().numpy().astype(np.float32)
            layer = {"op": "linear", "weight": f"w{i}", "bias": None}
            if module.bias is not None:
                arrays[f"b{i}"] = module.bias.detach().cpu().numpy().astype(np.float32)
                layer["bias"] = f"b{i}"
            layers.append(layer)
        elif isinstance(module, nn.ReLU):
            layers.append({"op": "relu"})
        else:
            raise TypeError(f"no export for {type(module).__name__}")
    spec = {"format": "digits-mlp/1", "layers": layers}
    np.savez(path, spec=np.array(json.dumps(spec)), **arrays)


os.makedirs(OUT_DIR, exist_ok=True)
export(model, os.path.join(OUT_DIR, "model.npz"))
print(
    f"saved model.npz after {steps} steps; budget used {budget_used():.2f}/{BUDGET_SECONDS:g} s",
    flush=True,
)
