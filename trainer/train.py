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
  AR_RECIPE          optional, not set by the server: "cuda" runs the CUDA recipe on any device
                     (tests run its code path on the CPU at toy shapes); unset, AR_DEVICE picks it

Two recipes, both in view below: every constant that differs reads `cpu_value if CPU_RECIPE
else cuda_value`. The CPU recipe is a 5M-parameter model trained eagerly, one batch a step.
The CUDA recipe is autoresearch-class: depth 8, width 512, head dim 128, context 2048, ~2^19
tokens per optimizer step by gradient accumulation, torch.compile, bf16 autocast, flash
attention (F.scaled_dot_product_attention picks it on CUDA). Both: Muon for the matrices inside
the blocks, AdamW for the embedding and the head, the learning rate scheduled on the fraction of
the budget used. The budget counts from process start: imports and compilation are inside it.
"""

import json
import math
import os
import time

PROCESS_START = time.time()
# CPU seconds count from here too: on a warm start the runner's clock starts as this file does,
# after the warm imports, whose CPU time is not the run's.
CPU_START = time.process_time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------- the device and the recipe
# Read before the hyperparameters: the ones that differ per recipe pick their value from it.
DEVICE = os.environ.get("AR_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
device_type = "cuda" if DEVICE.startswith("cuda") else "cpu"
RECIPE = os.environ.get("AR_RECIPE", device_type)
if RECIPE not in ("cpu", "cuda"):
    raise SystemExit(
        f"AR_RECIPE must be 'cpu' or 'cuda' (or unset: AR_DEVICE picks it), not {RECIPE!r}"
    )
CPU_RECIPE = RECIPE == "cpu"
# bf16 autocast where bf16 matrix products are fast: on CUDA, and on a CPU with oneDNN's bf16
# kernels (AVX-512 or AMX: ~1.8x fp32's tokens/s on a 2-core AMX machine). On an AVX2-only CPU,
# torch multiplies bf16 in a reference kernel ~7x slower than fp32 (one step of this model took
# 24 s), so training there stays in fp32. Fixed per machine: the same code trains the same way.
_cpu_bf16_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
BF16 = device_type == "cuda" or bool(_cpu_bf16_check())

# ---------------------------------------------------------------- hyperparameters
# The server's scale level (AR_SCALE, 1 = the default) grows the model for promotion runs:
# depth +2 and width +128 per step up, head dim fixed.
SCALE = max(1, int(os.environ.get("AR_SCALE", "1")))
DEPTH = 4 + 2 * (SCALE - 1) if CPU_RECIPE else 8 + 2 * (SCALE - 1)  # transformer blocks
WIDTH = 256 + 128 * (SCALE - 1) if CPU_RECIPE else 512 + 128 * (SCALE - 1)  # model dimension
HEAD_DIM = 64 if CPU_RECIPE else 128  # attention heads = WIDTH // HEAD_DIM
MLP_RATIO = 4  # hidden size of the MLP = MLP_RATIO * WIDTH
SEQ_LEN = 256 if CPU_RECIPE else 2048  # training context (the evaluation context is the server's)
# Sequences per forward/backward pass (the micro-batch), sized for memory: small on the CPU
# (more steps at short budgets); 64 x 2048 tokens keep an H100/H200 busy.
BATCH_SIZE = 8 if CPU_RECIPE else 64
# Micro-batches per optimizer step: CUDA 4 x 64 x 2048 = 2^19 tokens per step, as autoresearch.
GRAD_ACCUM_STEPS = 1 if CPU_RECIPE else 4
# torch.compile of the training step, in its first step, inside the budget. On an H200 it gave
# ~5x the tokens/s of eager at the small shape. Off on the CPU: inductor's C++ build of even a
# toy model's step took minutes on a busy 2-core machine, more than a 60 s budget.
COMPILE = not CPU_RECIPE
ROPE_BASE = 10_000.0
MATRIX_LR = 0.02 if CPU_RECIPE else 0.04  # Muon, for the 2-D weights inside the blocks
EMBED_LR = 0.01 if CPU_RECIPE else 0.6  # AdamW, token embedding
HEAD_LR = 0.004  # AdamW, output head
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.0
WARMUP_FRAC = 0.0  # of the budget; Muon needs no warmup at this scale
WARMDOWN_FRAC = 0.5  # linear decay over the last half of the budget: it helps at short budgets
FINAL_LR_FRAC = 0.0
# Stop training this early to leave time for the export (at most 25% of the budget).
EXPORT_RESERVE_SECONDS = 3.0 if CPU_RECIPE else 6.0

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
autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=BF16)


def budget_used() -> float:
    """Seconds of the budget spent so far, counted the way the runner counts them."""
    if BUDGET_KIND == "cpu":
        return time.process_time() - CPU_START
    return time.time() - PROCESS_START


# ---------------------------------------------------------------- data
with open(os.path.join(DATA_DIR, "tokenizer", "tokenizer.json")) as f:
    VOCAB_SIZE = json.load(f)["vocab_size"]
# Mapped, not read: a large corpus stays on disk, only the sampled windows are loaded.
train_tokens = np.memmap(os.path.join(DATA_DIR, "train", "tokens.bin"), dtype=np.uint16, mode="r")
data_generator = torch.Generator().manual_seed(SEED)


def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the train stream: inputs and next-token targets (one micro-batch)."""
    starts = torch.randint(
        0, len(train_tokens) - SEQ_LEN - 1, (BATCH_SIZE,), generator=data_generator
    )
    rows = [train_tokens[s : s + SEQ_LEN + 1] for s in starts.tolist()]
    window = torch.from_numpy(np.stack(rows).astype(np.int64))
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
        self.heads = WIDTH // HEAD_DIM
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
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
        max_len = max(SEQ_LEN, EVAL_CONTEXT)
        inv_freq = 1.0 / (
            ROPE_BASE ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
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
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's core).

    g is a stack of matrices [N, rows, cols]: each is orthogonalized on its own, in one batch."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if BF16 else g.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x.mT if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalized updates: for the 2-D matrices inside the blocks.

    Matrices of one shape form one group and are updated as a stack (a few large kernels
    instead of many small ones: on a GPU the step is otherwise launch-bound)."""

    def __init__(self, params, lr: float, momentum: float = 0.95) -> None:
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [dict(params=[p for p in params if tuple(p.shape) == s]) for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = group["params"]
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(grads)
            buf = state["momentum"]
            buf.lerp_(grads, 1 - group["momentum"])
            update = orthogonalize(grads.lerp_(buf, group["momentum"]))  # Nesterov
            rows, cols = params[0].shape
            scale = max(1.0, rows / cols) ** 0.5
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-group["lr"] * scale)


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


def next_token_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over a micro-batch (under autocast: bf16 if BF16)."""
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))


# Compiled for training only: `model` itself stays the plain module that is exported.
training_loss = torch.compile(next_token_loss, dynamic=False) if COMPILE else next_token_loss


def synchronize() -> None:
    """Wait for the GPU's queued work (timings that must include it); nothing on the CPU."""
    if device_type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- training loop
n_params = sum(p.numel() for p in model.parameters())
# Training FLOPs per token as nanochat counts them (for MFU): 6 per weight of the matmuls
# (the embedding is a lookup) and 12 x depth x width x context for attention.
flops_per_token = 6 * (n_params - model.embed.weight.numel()) + 12 * DEPTH * WIDTH * SEQ_LEN
print(
    f"model: {n_params:,} parameters, depth {DEPTH}, width {WIDTH}, vocab {VOCAB_SIZE}, "
    f"device {DEVICE}, recipe {RECIPE}, {GRAD_ACCUM_STEPS} x {BATCH_SIZE} x {SEQ_LEN} tokens "
    f"per step, compiled {COMPILE}, bf16 {BF16}, started in {budget_used():.1f} s",
    flush=True,
)
training_budget = max(BUDGET_SECONDS - min(EXPORT_RESERVE_SECONDS, 0.25 * BUDGET_SECONDS), 0.5)
training_start = time.time()
step = 0
last_loss = float("nan")  # mean train loss over the steps since the last read-back
tokens_seen = 0
first_step_seconds = second_step_seconds = 0.0  # compile time = the first step less the second
LOG_EVERY = 25  # steps between reading the loss back: .item() waits for the GPU, so not every step
loss_sum, loss_count = torch.zeros((), device=DEVICE), 0
while True:
    progress = budget_used() / training_budget
    if progress >= 1.0:
        break
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
    step_start = time.time()
    for _ in range(GRAD_ACCUM_STEPS):
        x, y = get_batch()
        with autocast:
            loss = training_loss(x, y)
        (loss / GRAD_ACCUM_STEPS).backward()
        loss_sum += loss.detach()
        loss_count += 1
        tokens_seen += x.numel()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    step += 1
    if step <= 2:
        synchronize()
        if step == 1:
            first_step_seconds = time.time() - step_start
        else:
            second_step_seconds = time.time() - step_start
            steady_start, steady_tokens = time.time(), tokens_seen
    if step % LOG_EVERY == 0 or step == 1:
        last_loss = loss_sum.item() / loss_count
        loss_sum.zero_()
        loss_count = 0
        if not math.isfinite(last_loss):
            raise SystemExit(f"training diverged by step {step}: loss {last_loss}")
        print(f"step {step:5d} | loss {last_loss:.4f} | budget {100 * progress:5.1f}%", flush=True)
synchronize()
training_seconds = time.time() - training_start
if loss_count:  # the steps since the last read-back
    last_loss = loss_sum.item() / loss_count
compile_seconds = max(first_step_seconds - second_step_seconds, 0.0) if COMPILE else 0.0
steady_seconds = time.time() - steady_start if step > 2 else 0.0
steady_tokens_per_second = (tokens_seen - steady_tokens) / steady_seconds if step > 2 else 0.0

# ---------------------------------------------------------------- save for the evaluator
# Exported in fp32 outside autocast, from eval mode, with a dynamic batch dimension: the plain
# module, never the compiled training function.
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
print(f"steady_tokens_per_second: {steady_tokens_per_second:.0f}")  # after the first two steps
print(f"flops_per_token:    {flops_per_token}")
print(f"compile_seconds:    {compile_seconds:.1f}")
print(f"first_step_seconds: {first_step_seconds:.1f}")
print(f"training_seconds:   {training_seconds:.1f}")
print(f"export_seconds:     {time.time() - export_start:.1f}")
print(f"total_seconds:      {time.time() - PROCESS_START:.1f}")
if device_type == "cuda":
    print(f"peak_memory_mb:     {torch.cuda.max_memory_allocated() / 2**20:.0f}", flush=True)
print(f"parameters:         {n_params}", flush=True)
# Leave at once: the model and the summary are out, and tearing torch down takes ~0.8 s more.
os._exit(0)
