"""
The baseline small GPT trainer: the ONE file an agent edits.

What is fixed (not in this file, not editable): the data and tokenizer (prepare.py), the
evaluation and its metric val_bpb (evaluate.py, run by the server in its own jail), the
clock, the seed and the record. This file trains for the time budget it is given and
saves the model; it never computes the official metric. Anything it prints is logged,
nothing it prints is trusted.

The contract with the server, all from the environment:
  AR_BUDGET_SECONDS  training budget in seconds; the runner stops this process at budget + grace
  AR_BUDGET_KIND     "wall" (seconds on the clock) or "cpu" (CPU seconds of this process)
  AR_DEVICE          "cpu" or "cuda"
  AR_SEED            the seed: owned by the server (paired comparisons), do not replace it
  AR_DATA_DIR        train/tokens.bin (uint16) and tokenizer/ (read-only); no val split here
  AR_OUT_DIR         where the model goes: model.pt2, a torch.export program mapping
                     token ids [B, T] (int64) to logits [B, T, V] with T = AR_EVAL_CONTEXT
  AR_EVAL_CONTEXT    the fixed evaluation context length T
  AR_SCALE           model size level for promotion runs (1 = default); the model grows with it
"""

import json
import math
import os
import time

PROCESS_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------- the device
# Read before the hyperparameters: the ones that differ per device pick their value from it.
DEVICE = os.environ.get("AR_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
device_type = "cuda" if DEVICE.startswith("cuda") else "cpu"

# ---------------------------------------------------------------- hyperparameters
# The server's scale level (AR_SCALE, 1 = the default) grows the model for promotion runs:
# depth +2 and width +128 per step up, head dim fixed at 64.
SCALE = max(1, int(os.environ.get("AR_SCALE", "1")))
DEPTH = 4 + 2 * (SCALE - 1)  # transformer blocks
WIDTH = 256 + 128 * (SCALE - 1)  # model dimension
HEADS = WIDTH // 64  # attention heads (head dim 64)
MLP_RATIO = 4  # hidden size of the MLP = MLP_RATIO * WIDTH
SEQ_LEN = 256  # training context (the evaluation context is fixed by the server)
# Sequences per step, by device: small batches on the CPU (more steps at short budgets); wider
# steps keep a GPU busy (on an H200, batch 64 trains ~10x the tokens/s of batch 8).
BATCH_SIZE = {"cpu": 8, "cuda": 64}[device_type]
ROPE_BASE = 10_000.0
MATRIX_LR = 0.02  # Muon, for the 2-D weights inside the blocks
EMBED_LR = 0.01  # AdamW, token embedding
HEAD_LR = 0.004  # AdamW, output head
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.0
WARMUP_FRAC = 0.0  # of the budget; Muon needs no warmup at this scale
WARMDOWN_FRAC = 0.5  # linear decay over the last half of the budget: it helps at short budgets
FINAL_LR_FRAC = 0.0
EXPORT_RESERVE_SECONDS = (
    3.0  # stop training this early to leave time for the export (at most 25% of the budget)
)

# ---------------------------------------------------------------- the contract
BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "60"))
BUDGET_KIND = os.environ.get("AR_BUDGET_KIND", "wall")
SEED = int(os.environ.get("AR_SEED", "0"))
DATA_DIR = os.environ.get("AR_DATA_DIR", os.path.expanduser("~/.cache/autoresearch-mcp/data"))
OUT_DIR = os.environ.get("AR_OUT_DIR", ".")
EVAL_CONTEXT = int(os.environ.get("AR_EVAL_CONTEXT", "256"))

torch.manual_seed(SEED)
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def budget_used() -> float:
    """Seconds of the budget spent so far, counted the way the runner counts them."""
    if BUDGET_KIND == "cpu":
        return time.process_time()
    return time.time() - PROCESS_START


# ---------------------------------------------------------------- data
with open(os.path.join(DATA_DIR, "tokenizer", "tokenizer.json")) as f:
    VOCAB_SIZE = json.load(f)["vocab_size"]
train_tokens = torch.from_numpy(
    np.fromfile(os.path.join(DATA_DIR, "train", "tokens.bin"), dtype=np.uint16).astype(np.int64)
)
data_generator = torch.Generator().manual_seed(SEED)


def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the train stream: inputs and next-token targets."""
    starts = torch.randint(
        0, train_tokens.numel() - SEQ_LEN - 1, (BATCH_SIZE,), generator=data_generator
    )
    window = torch.stack([train_tokens[s : s + SEQ_LEN + 1] for s in starts.tolist()])
    return window[:, :-1].to(DEVICE, non_blocking=True), window[:, 1:].to(DEVICE, non_blocking=True)


# ---------------------------------------------------------------- model
def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a learned scale."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = WIDTH // HEADS
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, HEADS, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, MLP_RATIO * WIDTH, bias=False)
        self.down = nn.Linear(MLP_RATIO * WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.mlp = MLP()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.head = nn.Linear(WIDTH, VOCAB_SIZE, bias=False)  # untied from the embedding
        head_dim = WIDTH // HEADS
        max_len = max(SEQ_LEN, EVAL_CONTEXT)
        inv_freq = 1.0 / (
            ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        )
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=0.001)
        for block in self.blocks:
            bound = 3**0.5 * WIDTH**-0.5
            nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.up.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # residual branches start as identity
            nn.init.zeros_(block.mlp.down.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(norm(x))


# ---------------------------------------------------------------- optimizer
def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's core)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalized updates: for the 2-D matrices inside the blocks."""

    def __init__(self, params, lr: float, momentum: float = 0.95) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p.grad)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(update, alpha=-group["lr"] * scale)


model = GPT().to(DEVICE)
matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
optimizers = [
    Muon(matrices, lr=MATRIX_LR),
    torch.optim.AdamW(
        [
            dict(params=[model.embed.weight], lr=EMBED_LR),
            dict(params=[model.head.weight], lr=HEAD_LR),
        ],
        betas=ADAM_BETAS,
        weight_decay=WEIGHT_DECAY,
        fused=device_type == "cuda",
    ),
]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]


def lr_multiplier(progress: float) -> float:
    """Schedule on the fraction of the budget used: warmup, flat, linear warmdown."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress < 1 - WARMDOWN_FRAC:
        return 1.0
    decay = (1 - progress) / WARMDOWN_FRAC
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * max(decay, 0.0)


# ---------------------------------------------------------------- training loop
n_params = sum(p.numel() for p in model.parameters())
print(
    f"model: {n_params:,} parameters, depth {DEPTH}, width {WIDTH}, vocab {VOCAB_SIZE}, device {DEVICE}",
    flush=True,
)
training_budget = max(BUDGET_SECONDS - min(EXPORT_RESERVE_SECONDS, 0.25 * BUDGET_SECONDS), 0.5)
training_start = time.time()
step = 0
last_loss = float("nan")  # mean train loss over the steps since the last read-back
tokens_seen = 0
LOG_EVERY = 25  # steps between reading the loss back: .item() waits for the GPU, so not every step
loss_sum, loss_steps = torch.zeros((), device=DEVICE), 0
while True:
    progress = budget_used() / training_budget
    if progress >= 1.0:
        break
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
    x, y = get_batch()
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))
    loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    step += 1
    tokens_seen += x.numel()
    loss_sum += loss.detach()
    loss_steps += 1
    if step % LOG_EVERY == 0 or step == 1:
        last_loss = loss_sum.item() / loss_steps
        loss_sum.zero_()
        loss_steps = 0
        if not math.isfinite(last_loss):
            raise SystemExit(f"training diverged by step {step}: loss {last_loss}")
        print(f"step {step:5d} | loss {last_loss:.4f} | budget {100 * progress:5.1f}%", flush=True)
training_seconds = time.time() - training_start

# ---------------------------------------------------------------- save for the evaluator
# Exported in fp32 outside autocast, from eval mode, with a dynamic batch dimension.
model.eval()
export_start = time.time()
example = torch.zeros(2, EVAL_CONTEXT, dtype=torch.long, device=DEVICE)
program = torch.export.export(
    model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},)
)
torch.export.save(program, os.path.join(OUT_DIR, "model.pt2"))

print("---")
print(f"steps:              {step}")
print(f"train_loss:         {last_loss:.4f}")
print(f"tokens_trained:     {tokens_seen}")
print(f"tokens_per_second:  {tokens_seen / max(training_seconds, 1e-9):.0f}")
print(f"training_seconds:   {training_seconds:.1f}")
print(f"export_seconds:     {time.time() - export_start:.1f}")
print(f"total_seconds:      {time.time() - PROCESS_START:.1f}")
print(f"parameters:         {n_params}", flush=True)
if device_type == "cuda":
    print(f"peak_memory_mb:     {torch.cuda.max_memory_allocated() / 2**20:.0f}", flush=True)
# Leave at once: the model and the summary are out, and tearing torch down takes ~0.8 s more.
os._exit(0)
