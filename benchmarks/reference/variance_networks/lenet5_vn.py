"""The authors' variance-networks-pytorch/scripts/lenet5-vn.py, ported to current torch on CPU.

Changes from the original (orig_lenet5-vn.py beside this file), and nothing else:
- data: pvae's grey-level MNIST (the same 20,000-image seed-0 draw from the 50,000 train split
  that benchmarks/variance_layers.py trains on; the 10,000 test images) as tensors, shuffled
  batches of 200 (their DataLoader), instead of torchvision's 60,000 download;
  SGVLB's train_size = len(trainset) as theirs;
- --epochs (default 3) instead of 200 epochs; the learning rate follows their
  lr_linear(epoch, 0, --schedule-epochs (default 200), 1e-3), i.e. the first epochs of their
  200-epoch linear decay;
- CPU, one thread, seed --seed; Variable/.cuda()/async removed; loss.item();
- their "ELBO evaluation" (10 forward passes over the training set per epoch, no update) only
  with --elbo-pass: it changes no parameter (it moves the unused BN running statistics);
- evaluation after epochs before the last on the first --mid-eval-size test images (2,000),
  after the last on all 10,000;
- evaluation: theirs (net.train(): BN batch statistics of 200 test images, noise on), 1 and
  10 samples; plus the 10-sample accuracy with BN running statistics (our evaluation) and
  noise on, after the last epoch.
"""
import argparse
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.nn import functional as F

from core import layers

parser = argparse.ArgumentParser()
parser.add_argument("--var1", action='store_true', default=False)
parser.add_argument("--var2", action='store_true', default=False)
parser.add_argument("--var3", action='store_true', default=False)
parser.add_argument("--var4", action='store_true', default=False)
parser.add_argument("--train-ens", type=int, default=1)
parser.add_argument("--no-biases", action='store_true', default=False)
parser.add_argument("--tanh", action='store_true', default=False)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--schedule-epochs", type=int, default=200)
parser.add_argument("--train-size", type=int, default=20000)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--mid-eval-size", type=int, default=2000, help="test images evaluated after epochs before the last")
parser.add_argument("--elbo-pass", action='store_true', default=False)
flags = parser.parse_args()
torch.set_num_threads(1)
torch.manual_seed(flags.seed)


class LeNet5(layers.ModuleWrapper):

    def __init__(self):
        super(LeNet5, self).__init__()
        self.num_classes = 10
        if flags.tanh:
            nonlinearity = nn.Tanh
        else:
            nonlinearity = nn.ReLU

        if flags.var1:
            self.conv1 = layers.ConvVariance(1, 20, 5, padding=0, bias=False)
        else:
            self.conv1 = nn.Conv2d(1, 20, 5, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(20, affine=not flags.no_biases)
        self.relu1 = nonlinearity()
        self.pool1 = nn.MaxPool2d(2, padding=0)

        if flags.var2:
            self.conv2 = layers.ConvVariance(20, 50, 5, padding=0, bias=False)
        else:
            self.conv2 = nn.Conv2d(20, 50, 5, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(50, affine=not flags.no_biases)
        self.relu2 = nonlinearity()
        self.pool2 = nn.MaxPool2d(2, padding=0)

        self.flatten = layers.FlattenLayer(800)

        if not (flags.var1 or flags.var2 or flags.var3 or flags.var4):
            self.do1 = nn.Dropout(0.5)

        if flags.var3:
            self.dense1 = layers.LinearVariance(800, 500, bias=False)
        else:
            self.dense1 = nn.Linear(800, 500, bias=False)
        self.bn3 = nn.BatchNorm1d(500, affine=not flags.no_biases)
        self.relu3 = nonlinearity()

        if flags.var4:
            self.dense2 = layers.LinearVariance(500, 10, bias=False)
        else:
            self.dense2 = nn.Linear(500, 10, bias=False)


def logmeanexp(x, dim):
    xm, _ = torch.max(x, dim, keepdim=True)
    return (xm + torch.log(torch.mean(torch.exp(x - xm), dim, keepdim=True))).squeeze(dim)


def sgvlb(net, train_size, input, target):
    kl = 0.0
    for module in net.modules():
        if hasattr(module, 'kl_reg'):
            kl = kl + module.kl_reg()
    return F.cross_entropy(input, target) * train_size + kl


def lr_linear(epoch_num, decay_start, total_epochs, start_value):
    if epoch_num < decay_start:
        return start_value
    return start_value * float(total_epochs - epoch_num) / float(total_epochs - decay_start)


@torch.no_grad()
def evaluate(net, xs, ys, num_ens=1, batch=200):
    correct, nll = 0, 0.0
    for i in range(0, len(xs), batch):
        inputs, labels = xs[i:i + batch], ys[i:i + batch]
        outputs = torch.zeros(inputs.shape[0], net.num_classes, num_ens)
        for j in range(num_ens):
            outputs[:, :, j] = F.log_softmax(net(inputs), dim=1)
        lp = logmeanexp(outputs, dim=2)
        correct += int((lp.argmax(1) == labels).sum())
        nll += float(F.nll_loss(lp, labels, reduction='sum'))
    return correct / len(xs), nll / len(xs)


sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))  # the repository root
from pvae.data import load_dataset  # noqa: E402

train = load_dataset("mnist", "train", size=flags.train_size, size_seed=flags.seed,
                     progress=False, binarize=None)
test = load_dataset("mnist", "test", progress=False, binarize=None)
xtr, ytr = train.images, train.labels
xte, yte = test.images, test.labels
assert xtr.dtype == torch.float32 and float(xtr.max()) <= 1.0, (xtr.dtype, xtr.max())

net = LeNet5()
print(net, flush=True)
train_size = len(xtr)
optimizer = optim.Adam(net.parameters(), lr=0.001)
lr_start = 1e-3
start = time.time()
for epoch in range(flags.epochs):
    t0 = time.time()
    lr = lr_linear(epoch, 0, flags.schedule_epochs, lr_start)
    for group in optimizer.param_groups:
        group['lr'] = lr
    net.train()
    training_loss, steps = 0.0, 0
    perm = torch.randperm(train_size)
    for i in range(0, train_size, 200):
        idx = perm[i:i + 200]
        inputs, labels = xtr[idx], ytr[idx]
        steps += 1
        optimizer.zero_grad()
        outputs = torch.zeros(inputs.shape[0], net.num_classes, flags.train_ens)
        for j in range(flags.train_ens):
            outputs[:, :, j] = F.log_softmax(net(inputs), dim=1)
        log_outputs = logmeanexp(outputs, dim=2)
        loss = sgvlb(net, train_size, log_outputs, labels)
        loss.backward()
        optimizer.step()
        training_loss += loss.item()
    tr_ce = training_loss / steps / train_size
    if flags.elbo_pass:
        with torch.no_grad():
            for i in range(0, train_size, 200):
                for j in range(10):
                    net(xtr[perm[i:i + 200]])
    net.train()
    n_eval = len(xte) if epoch + 1 == flags.epochs else flags.mid_eval_size
    acc1, nll1 = evaluate(net, xte[:n_eval], yte[:n_eval], 1)
    acc10, nll10 = evaluate(net, xte[:n_eval], yte[:n_eval], 10)
    row = dict(epoch=epoch + 1, lr=lr, test_images=n_eval, train_ce=round(tr_ce, 4), te_acc_stoch=acc1,
               te_acc_ens10=acc10, te_nll_ens10=round(nll10, 4),
               seconds=round(time.time() - start))
    if epoch + 1 == flags.epochs:
        net.eval()  # BN running statistics; switch the variance layers' noise back on
        for m in net.modules():
            if isinstance(m, (layers.LinearVariance, layers.ConvVariance)):
                m.train()
        row["te_acc_ens10_running_bn"], _ = evaluate(net, xte, yte, 10)
        net.train()
    print(row, flush=True)
