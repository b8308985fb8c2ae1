"""Train a classifier on top of a loaded encoder, in plain PyTorch: fine-tune it end to end
with a new linear head, or (--frozen) train the head alone.

    python examples/train_classifier.py RUN [--data cifar10] [--epochs 5] [--frozen]

The data comes from selfsup's readers (uint8 [N, C, H, W] and labels); the loop is the usual
one. `enc.prepare` brings the images to the run's channels and data size, `eval_transform` to
its evaluation size and normalisation, so the classifier sees what the evaluators see;
augmentation is a random flip.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import selfsup
from selfsup.data import load_dataset
from selfsup.views.recipes import eval_transform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a selfsup run folder")
    ap.add_argument("--data", default=None, help="a labelled dataset (default: the run's own)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--frozen", action="store_true", help="train the head only")
    ap.add_argument("--limit", type=int, default=None, help="use the first N training images")
    args = ap.parse_args()

    torch.manual_seed(0)
    enc = selfsup.load(args.run)
    name = args.data or enc.config.data.name
    train = load_dataset(name, "train", root=enc.config.data.root)
    test = load_dataset(name, "test", root=enc.config.data.root)
    x_train, y_train = enc.prepare(train.images), train.labels  # the run's channels and size
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_test = enc.prepare(test.images)

    model = nn.Sequential(enc.model, nn.Linear(enc.dim, len(train.classes)))
    params = model[1].parameters() if args.frozen else model.parameters()
    enc.model.requires_grad_(not args.frozen)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return eval_transform(x, enc.mean, enc.std, enc.size)

    for epoch in range(args.epochs):
        model.train()
        if args.frozen:
            enc.model.eval()  # frozen: BatchNorm keeps the pretrained statistics
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            x = inputs(x_train[idx])
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(inputs(x_test[i:i + 512])).argmax(1) == test.labels[i:i + 512]).sum().item()
                          for i in range(0, len(x_test), 512))
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test top-1 {100 * correct / len(x_test):.2f} %")


if __name__ == "__main__":
    main()
