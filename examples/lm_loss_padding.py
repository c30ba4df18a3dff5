"""
Language-model loss with padding
================================

Token-level language-model loss over (batch, seq, vocab) logits, padding ignored::

    python examples/lm_loss_padding.py

Sequences of different lengths are padded to one length; the padded target positions hold
``-100`` (PyTorch's / Hugging Face's ``ignore_index`` convention).  With
``ignore_class=-100`` fastxent gives those positions zero loss and zero gradient, and the
default reduction averages over the real tokens only.

Part 1 checks the loss and the gradient against a float64 NumPy computation.  Part 2 trains
a bigram language model on a toy corpus by gradient descent, the gradient of the bigram
table being the scatter-add of d(loss)/d(logits).  Prints the checks and ``result: OK``.
"""

import numpy as np

import fastxent as fx

PAD = -100
SEED = 0


def numpy_token_loss(labels, logits):
    """Mean cross-entropy over non-padding tokens and its gradient, float64 NumPy."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    log_p = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    valid = labels != PAD
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    n_valid = valid.sum()
    loss = (nll * valid).sum() / n_valid
    onehot = np.eye(x.shape[-1])[safe]
    grad = (np.exp(log_p) - onehot) * valid[..., None] / n_valid
    return loss, grad


def pad_batch(sequences, length):
    """Inputs padded with token 0 and next-token targets padded with PAD."""
    inputs = np.zeros((len(sequences), length), dtype=np.int64)
    targets = np.full((len(sequences), length), PAD, dtype=np.int64)
    for i, seq in enumerate(sequences):
        n = len(seq) - 1
        inputs[i, :n] = seq[:-1]
        targets[i, :n] = seq[1:]
    return inputs, targets


def check_against_numpy(rng):
    batch, seq, vocab = 4, 16, 1000
    logits = rng.normal(0.0, 3.0, size=(batch, seq, vocab)).astype(np.float32)
    lengths = [16, 11, 5, 1]
    labels = rng.integers(0, vocab, size=(batch, seq))
    for i, n in enumerate(lengths):
        labels[i, n:] = PAD

    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD)
    loss, grad = loss_fn.loss_and_grad(labels, logits)
    ref_loss, ref_grad = numpy_token_loss(labels, logits)

    loss_diff = abs(loss - ref_loss)
    grad_diff = float(np.max(np.abs(grad - ref_grad)))
    pad_grad_zero = bool(np.all(grad[labels == PAD] == 0.0))
    per_token = fx.sparse_categorical_crossentropy(labels, logits, from_logits=True,
                                                   ignore_class=PAD)
    print(f"logits {logits.shape} {logits.dtype}, real tokens {int((labels != PAD).sum())}")
    print(f"fastxent loss {loss:.6f}   numpy loss {ref_loss:.6f}")
    print(f"max abs loss diff: {loss_diff:.3e}")
    print(f"max abs grad diff: {grad_diff:.3e}")
    print(f"padding gradient is zero: {pad_grad_zero}")
    print(f"per-token loss shape {per_token.shape}, zero at padding: "
          f"{bool(np.all(per_token[labels == PAD] == 0))}")
    return loss_diff < 1e-5 and grad_diff < 1e-7 and pad_grad_zero


def train_bigram(rng):
    corpus = [
        "the cat sat on the mat",
        "the dog sat on the log",
        "a cat saw a dog",
        "the dog saw the cat on the mat",
        "a dog sat",
    ]
    words = sorted({w for line in corpus for w in line.split()})
    vocab = ["<bos>", "<eos>", *words]
    index = {w: i for i, w in enumerate(vocab)}
    sequences = [[0, *(index[w] for w in line.split()), 1] for line in corpus]
    inputs, targets = pad_batch(sequences, max(len(s) for s in sequences) - 1)

    V = len(vocab)
    table = np.zeros((V, V))  # bigram logits: row = previous token
    loss_fn = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD, n_threads=1)
    first = None
    for _ in range(300):
        logits = table[inputs]  # (batch, seq, vocab)
        loss, grad_logits = loss_fn.loss_and_grad(targets, logits)
        first = loss if first is None else first
        grad_table = np.zeros_like(table)
        np.add.at(grad_table, inputs, grad_logits)  # padding rows carry zero gradient
        table -= 5.0 * grad_table
    # the optimum of an unregularized bigram model is the empirical conditional entropy
    counts = np.zeros((V, V))
    valid = targets != PAD
    np.add.at(counts, (inputs[valid], targets[valid]), 1.0)
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    entropy = -np.sum(counts * np.log(np.where(counts > 0, probs, 1.0))) / valid.sum()
    print(f"bigram LM: loss {first:.4f} -> {loss:.4f} (optimum {entropy:.4f}), "
          f"perplexity {np.exp(loss):.3f}")
    return loss < first and abs(loss - entropy) < 0.05


def main():
    rng = np.random.default_rng(SEED)
    ok = check_against_numpy(rng)
    ok = train_bigram(rng) and ok
    print(f"result: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    if main():  # exit status 1 on a failed check (and no exit at all on success, so that
        raise SystemExit(1)  # the documentation's gallery can run this file in-process)
