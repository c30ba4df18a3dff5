"""
Evaluation at scale with fastxent.metrics
=========================================

1. A validation loop: a softmax-regression model scored on a validation set in minibatches of
   unequal size with a stateful ``SparseCategoricalCrossentropy``; the result equals one call
   over the whole set (a mean of batch means would not).
2. A corpus perplexity: next-token logits of a bigram model written to a memory-mapped file,
   streamed through ``Perplexity`` by ``evaluate`` with a progress bar (tqdm, when installed);
   padding tokens are masked.

Run: ``python examples/validation_metrics.py`` (a few seconds).
"""

import tempfile
from pathlib import Path

import numpy as np

import fastxent as fx
from fastxent.metrics import Perplexity, SparseCategoricalCrossentropy, evaluate

rng = np.random.default_rng(0)

# ---------------------------------------------------------------- 1. validation loop
n_features, n_classes = 20, 5
true_w = rng.normal(size=(n_features, n_classes))
x_val = rng.normal(size=(10_000, n_features)).astype(np.float32)
y_val = np.argmax(x_val @ true_w + rng.gumbel(size=(10_000, n_classes)), axis=1)
w_model = (0.5 * true_w).astype(np.float32)  # a half-trained model


def predict(x):
    return x @ w_model


metric = SparseCategoricalCrossentropy(from_logits=True, name="val_loss")
batches = np.split(np.arange(len(x_val)), [100, 3000, 3001, 7777])  # unequal minibatches
batch_means = []
for idx in batches:
    logits = predict(x_val[idx])
    metric.update_state(y_val[idx], logits)
    batch_means.append(fx.sparse_categorical_crossentropy(y_val[idx], logits,
                                                          from_logits=True).mean())
one_call = fx.SparseCategoricalCrossentropy(from_logits=True)(y_val, predict(x_val))
print(f"validation loss (stateful metric): {metric.result():.6f}")
print(f"validation loss (one call):        {one_call:.6f}")
print(f"mean of batch means (wrong):       {np.mean(batch_means):.6f}")
print(f"metric equals one call: {abs(metric.result() - one_call) <= 1e-6 * one_call}")

# ------------------------------------------------------- 2. corpus perplexity on disk
vocab, seq_len, n_seq, pad = 256, 64, 1024, 0
bigram = rng.dirichlet(np.full(vocab, 0.3), size=vocab)  # P(next | current)
bigram[:, pad] = 0.0  # the padding id is never a real token
bigram /= bigram.sum(axis=1, keepdims=True)
log_bigram = np.log(bigram).astype(np.float32)
tokens = np.empty((n_seq, seq_len + 1), dtype=np.int64)
tokens[:, 0] = rng.integers(1, vocab, n_seq)
cdf = np.cumsum(bigram, axis=1)
for t in range(seq_len):
    u = rng.random(n_seq)[:, None]
    tokens[:, t + 1] = np.minimum((u > cdf[tokens[:, t]]).sum(axis=1), vocab - 1)
lengths = rng.integers(seq_len // 2, seq_len + 1, n_seq)
targets = tokens[:, 1:].copy()
targets[np.arange(seq_len)[None, :] >= lengths[:, None]] = pad  # right padding
real = targets != pad

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "logits.f32"
    logits = np.memmap(path, dtype=np.float32, mode="w+", shape=(n_seq, seq_len, vocab))
    for lo in range(0, n_seq, 128):  # the "model" writes its outputs batch by batch
        logits[lo:lo + 128] = log_bigram[tokens[lo:lo + 128, :-1]]
    logits.flush()
    del logits
    on_disk = np.memmap(path, dtype=np.float32, mode="r", shape=(n_seq, seq_len, vocab))
    size_mb = on_disk.nbytes / 1e6
    ppl = Perplexity(from_logits=True, mask_token_id=pad)
    result = evaluate(ppl, targets, on_disk, batch_rows=64, progress=True)
    del on_disk

lp = log_bigram[tokens[:, :-1], targets]
exact = float(np.exp(-lp[real].astype(np.float64).mean()))
print(f"corpus: {real.sum()} tokens ({size_mb:.0f} MB of logits on disk), "
      f"{(~real).sum()} padding")
print(f"perplexity (streamed): {result:.4f}")
print(f"perplexity (exact):    {exact:.4f}")
print(f"equal: {abs(result - exact) <= 1e-5 * exact}")
print("result: OK" if abs(result - exact) <= 1e-5 * exact
      and abs(metric.result() - one_call) <= 1e-6 * one_call else "result: MISMATCH")
