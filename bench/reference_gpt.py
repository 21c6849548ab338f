"""A textbook nanoGPT under the train.py contract: the reference the baseline is benchmarked against.

Learned absolute positions, LayerNorm, GELU MLP, tied embeddings, AdamW (lr 3e-4, cosine
to 10% after a short warmup). Same contract as trainer/train.py: budget, device, seed, data
and output folder from the environment; the budget counts from process start, minus a reserve
for the export; saves model.pt2 (torch.export, dynamic batch).

Two recipes, like train.py (AR_RECIPE, else the device): "cpu" is the small fp32 model
bench/trainer.py compares with; "cuda" is a plain GPT of the CUDA baseline's shape (depth 8,
width 512, head dim 128, context 2048, batch 64) with torch.compile, bf16 autocast and
F.scaled_dot_product_attention (flash on CUDA): what bench/gpu_check.py sets train.py's CUDA
recipe beside, for tokens/s and MFU. It prints the same summary lines as train.py.
"""

import json
import math
import os
import time

PROCESS_START = time.time()

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEVICE = os.environ.get("AR_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
device_type = "cuda" if DEVICE.startswith("cuda") else "cpu"
RECIPE = os.environ.get("AR_RECIPE", device_type)
if RECIPE not in ("cpu", "cuda"):
    raise SystemExit(f"AR_RECIPE must be 'cpu' or 'cuda' (or unset), not {RECIPE!r}")
CPU_RECIPE = RECIPE == "cpu"
DEPTH = 4 if CPU_RECIPE else 8
WIDTH = 256 if CPU_RECIPE else 512
HEADS = 4  # head dim 64 on the CPU, 128 on CUDA
SEQ_LEN = 256 if CPU_RECIPE else 2048
BATCH_SIZE = 8 if CPU_RECIPE else 64
COMPILE = not CPU_RECIPE  # with bf16 autocast; the CPU recipe runs eagerly in fp32
LR, BETAS, WEIGHT_DECAY, WARMUP_FRAC, MIN_LR_FRAC = 3e-4, (0.9, 0.95), 0.1, 0.05, 0.1
EXPORT_RESERVE_SECONDS = 3.0 if CPU_RECIPE else 6.0

BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "60"))
SEED = int(os.environ.get("AR_SEED", "0"))
DATA_DIR = os.environ.get("AR_DATA_DIR", os.path.expanduser("~/.cache/autoresearch-mcp/data"))
OUT_DIR = os.environ.get("AR_OUT_DIR", ".")
EVAL_CONTEXT = int(os.environ.get("AR_EVAL_CONTEXT", "256"))

torch.manual_seed(SEED)
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=COMPILE)
with open(os.path.join(DATA_DIR, "tokenizer", "tokenizer.json")) as f:
    VOCAB_SIZE = json.load(f)["vocab_size"]
train_path = os.path.join(DATA_DIR, "train", "tokens.bin")
train_tokens = torch.from_numpy(np.fromfile(train_path, dtype=np.uint16).astype(np.int64))
data_generator = torch.Generator().manual_seed(SEED)


def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the train stream: inputs and next-token targets."""
    high = train_tokens.numel() - SEQ_LEN - 1
    starts = torch.randint(0, high, (BATCH_SIZE,), generator=data_generator)
    window = torch.stack([train_tokens[s : s + SEQ_LEN + 1] for s in starts.tolist()])
    return window[:, :-1].to(DEVICE), window[:, 1:].to(DEVICE)


def synchronize() -> None:
    """Wait for the GPU's queued work (timings that must include it); nothing on the CPU."""
    if device_type == "cuda":
        torch.cuda.synchronize()


class Block(nn.Module):
    """Pre-LayerNorm block: causal self-attention, then a GELU MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.fc = nn.Linear(WIDTH, 4 * WIDTH)
        self.out = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token + learned position embeddings, blocks, final LayerNorm, head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB_SIZE, WIDTH)
        self.wpe = nn.Embedding(max(SEQ_LEN, EVAL_CONTEXT), WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB_SIZE, bias=False)
        self.head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = (
                    0.02 / math.sqrt(2 * DEPTH)
                    if name.endswith(("proj.weight", "out.weight"))
                    else 0.02
                )
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


model = GPT().to(DEVICE)
decay = [p for p in model.parameters() if p.ndim == 2]
no_decay = [p for p in model.parameters() if p.ndim < 2]
optimizer = torch.optim.AdamW(
    [dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay, weight_decay=0.0)],
    lr=LR,
    betas=BETAS,
    fused=device_type == "cuda",
)


def next_token_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch."""
    return F.cross_entropy(model(x).float().view(-1, VOCAB_SIZE), y.reshape(-1))


training_loss = torch.compile(next_token_loss, dynamic=False) if COMPILE else next_token_loss


def lr_at(progress: float) -> float:
    """Linear warmup, then cosine down to MIN_LR_FRAC of the peak, on the budget fraction used."""
    if progress < WARMUP_FRAC:
        return LR * progress / WARMUP_FRAC
    t = min((progress - WARMUP_FRAC) / (1 - WARMUP_FRAC), 1.0)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * t)))


n_params = sum(p.numel() for p in model.parameters())
# nanochat's count: 6 per matmul weight (the tied table counted once, as the head; the
# position table is a lookup) and 12 x depth x width x context for attention.
flops_per_token = 6 * (n_params - model.wpe.weight.numel()) + 12 * DEPTH * WIDTH * SEQ_LEN
print(
    f"model: {n_params:,} parameters (reference nanoGPT), vocab {VOCAB_SIZE}, device {DEVICE}, "
    f"recipe {RECIPE}, compiled {COMPILE}",
    flush=True,
)
training_budget = max(BUDGET_SECONDS - EXPORT_RESERVE_SECONDS, 0.5)
training_start = time.time()
step = tokens_seen = 0
smooth_loss = 0.0
first_step_seconds = second_step_seconds = 0.0
while True:
    progress = (time.time() - PROCESS_START) / training_budget
    if progress >= 1.0:
        break
    for group in optimizer.param_groups:
        group["lr"] = lr_at(progress)
    step_start = time.time()
    x, y = get_batch()
    with autocast:
        loss = training_loss(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    tokens_seen += x.numel()
    if step <= 2:
        synchronize()
        if step == 1:
            first_step_seconds = time.time() - step_start
        else:
            second_step_seconds = time.time() - step_start
            steady_start, steady_tokens = time.time(), tokens_seen
    if step % 25 == 0 or step == 1:  # .item() waits for the GPU: not every step
        if not math.isfinite(loss.item()):
            raise SystemExit(f"training diverged at step {step}: loss {loss.item()}")
        smooth_loss = 0.5 * smooth_loss + 0.5 * loss.item() if step > 1 else loss.item()
        print(
            f"step {step:5d} | loss {smooth_loss:.4f} | budget {100 * progress:5.1f}%", flush=True
        )
synchronize()
training_seconds = time.time() - training_start
compile_seconds = max(first_step_seconds - second_step_seconds, 0.0) if COMPILE else 0.0
steady_seconds = time.time() - steady_start if step > 2 else 0.0
steady_tokens_per_second = (tokens_seen - steady_tokens) / steady_seconds if step > 2 else 0.0

model.eval()
export_start = time.time()
example = torch.zeros(2, EVAL_CONTEXT, dtype=torch.long, device=DEVICE)
batch = torch.export.Dim("batch", min=1, max=1024)
program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
torch.export.save(program, os.path.join(OUT_DIR, "model.pt2"))

print("---")
print(f"steps:              {step}")
print(f"train_loss:         {smooth_loss:.4f}")
print(f"tokens_trained:     {tokens_seen}")
print(f"tokens_per_second:  {tokens_seen / max(training_seconds, 1e-9):.0f}")
print(f"steady_tokens_per_second: {steady_tokens_per_second:.0f}")  # after the first two steps
print(f"flops_per_token:    {flops_per_token}")
print(f"compile_seconds:    {compile_seconds:.1f}")
print(f"training_seconds:   {training_seconds:.1f}")
print(f"export_seconds:     {time.time() - export_start:.1f}")
print(f"total_seconds:      {time.time() - PROCESS_START:.1f}")
if device_type == "cuda":
    print(f"peak_memory_mb:     {torch.cuda.max_memory_allocated() / 2**20:.0f}")
print(f"parameters:         {n_params}", flush=True)
