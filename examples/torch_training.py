"""
Train a PyTorch model with fastxent's losses
============================================

A 64-128-10 ReLU network trained with ``torch.optim.Adam`` on scikit-learn's digits, twice:

1. an ``nn.Linear`` output layer and :func:`fastxent.torch.cross_entropy` (label smoothing
   0.05) in place of ``torch.nn.functional.cross_entropy``;
2. the output layer fused with the loss by :func:`fastxent.torch.linear_cross_entropy`,
   which takes the layer's weight and bias and never forms the logits (the memory saving
   matters for vocabularies of tens of thousands of entries; here it shows the API).

Both are ``torch.autograd.Function`` objects: ``loss.backward()`` and the optimizer work as
with PyTorch's own losses.  Needs PyTorch and scikit-learn::

    python examples/torch_training.py

Prints the largest difference between fastxent's and PyTorch's loss and gradient on one
batch, then the test accuracy of each model (>= 0.95 expected) and the training time.
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastxent.torch as fxt

SEED = 0
EPOCHS = 10
BATCH = 64
SMOOTHING = 0.05

torch.manual_seed(SEED)
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    (X / 16.0).astype(np.float32), y, test_size=0.25, random_state=SEED, stratify=y)
X_train, X_test = torch.from_numpy(X_train), torch.from_numpy(X_test)
y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)

# %%
# The same numbers as PyTorch
# ---------------------------
# One batch through an untrained model: loss and gradient of the logits from
# ``fastxent.torch.cross_entropy`` and from ``F.cross_entropy``.

body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU())
head = torch.nn.Linear(128, 10)
logits = head(body(X_train[:BATCH])).detach()
ours = logits.clone().requires_grad_()
theirs = logits.clone().requires_grad_()
loss_ours = fxt.cross_entropy(ours, y_train[:BATCH], label_smoothing=SMOOTHING)
loss_theirs = torch.nn.functional.cross_entropy(theirs, y_train[:BATCH],
                                                label_smoothing=SMOOTHING)
loss_ours.backward()
loss_theirs.backward()
print(f"loss: fastxent {loss_ours.item():.6f}, PyTorch {loss_theirs.item():.6f}")
print(f"max abs gradient difference: {(ours.grad - theirs.grad).abs().max().item():.2e}")


# %%
# Training with either loss
# -------------------------


def train(head_loss):
    """Adam on mini-batches; ``head_loss(hidden, labels, head)`` is the loss of a batch."""
    torch.manual_seed(SEED)
    body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU())
    head = torch.nn.Linear(128, 10)
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(X_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            optimizer.zero_grad()
            loss = head_loss(body(X_train[idx]), y_train[idx], head)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if epoch % 3 == 0 or epoch == EPOCHS - 1:
            print(f"  epoch {epoch + 1:2d}: train loss {total / len(X_train):.4f}")
    with torch.no_grad():
        predicted = head(body(X_test)).argmax(1)
    return (predicted == y_test).float().mean().item()


runs = {
    "nn.Linear + fastxent.torch.cross_entropy": (
        lambda h, t, head: fxt.cross_entropy(head(h), t, label_smoothing=SMOOTHING)),
    "fastxent.torch.linear_cross_entropy": (
        lambda h, t, head: fxt.linear_cross_entropy(h, head.weight, t, head.bias,
                                                    label_smoothing=SMOOTHING)),
}
for name, head_loss in runs.items():
    print(name)
    start = time.perf_counter()
    accuracy = train(head_loss)
    print(f"  test accuracy: {accuracy:.4f}")
    print(f"  training time: {time.perf_counter() - start:.2f} s")
