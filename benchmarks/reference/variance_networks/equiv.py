"""Same parameters, same noise: does ours (Pyro ELBO of variance_lenet) give the authors' loss
(SGVLB = mean CE * N) and gradient? Run: python equiv.py"""
import sys
import types

import pyro
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

HERE = __import__("pathlib").Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))  # the repository root
torch.set_num_threads(1)
sys.argv = ["x", "--var1", "--var2", "--var3"]
# build the authors' net from the ported script's class without running its training
src = (HERE / "lenet5_vn.py").read_text().split("sys.path.insert(0, str(")[0]
ns: dict = {"__name__": "vn"}
exec(compile(src, "lenet5_vn_head", "exec"), ns)
from core import layers  # noqa: E402

from pvae.infer.objectives import make_objective  # noqa: E402,F401
from pvae.models import build_model  # noqa: E402

torch.manual_seed(0)
theirs = ns["LeNet5"]()
ours = build_model("variance_lenet", variance_layers=[0, 1, 2])
# copy parameters: conv1/conv2/dense1 sigma, bn affine, dense2 weight (ours has a bias: zero it)
o = ours.net
with torch.no_grad():
    o.weights[0].sigma.copy_(theirs.conv1.sigma)
    o.weights[1].sigma.copy_(theirs.conv2.sigma)
    o.weights[2].sigma.copy_(theirs.dense1.sigma)
    o.weights[3].weight.copy_(theirs.dense2.weight)
    o.weights[3].bias.zero_()
    for bn_o, bn_t in zip(o.norms, [theirs.bn1, theirs.bn2, theirs.bn3]):
        bn_o.weight.copy_(bn_t.weight)
        bn_o.bias.copy_(bn_t.bias)

B, N = 64, 20000
x = torch.rand(B, 1, 28, 28)
y = torch.randint(0, 10, (B,))
noise = {i: torch.randn(B, *s) for i, s in o.noise_shapes.items()}
names = {0: "noise_conv1", 1: "noise_conv2", 2: "noise_dense1"}

# theirs with our noise injected
queue = [noise[0], noise[1], noise[2]]
for mod in (theirs.conv1, theirs.conv2, theirs.dense1):
    def fwd(self, h, _cls=type(mod)):
        std = torch.sqrt(1e-16 + (self.op_nobias(h * h, self.sigma * self.sigma) if _cls is layers.ConvVariance else F.linear(h * h, self.sigma * self.sigma)))
        return queue.pop(0) * std
    mod.forward = types.MethodType(fwd, mod)
theirs.train()
loss_t = F.cross_entropy(F.log_softmax(theirs(x), 1), y) * N
loss_t.backward()

# ours: Trace_ELBO with the noise sites conditioned to the same draws, data plate scaled N/B
ours.train()
data = {names[i]: noise[i] for i in noise}
def model(y, x):
    with poutine.scale(scale=N / B):
        ours.model(y, x)
def guide(y, x):
    with poutine.scale(scale=N / B):
        ours.guide(y, x)
with pyro.settings.context(module_local_params=True):
    elbo = pyro.infer.Trace_ELBO()
    loss_o = elbo.differentiable_loss(poutine.condition(model, data), poutine.condition(guide, data), y, x)
loss_o.backward()
print("loss theirs %.6f ours %.6f rel diff %.2e" % (loss_t.item(), loss_o.item(), abs(loss_t.item() - loss_o.item()) / loss_t.item()))
pairs = [("conv1.sigma", theirs.conv1.sigma, o.weights[0].sigma), ("conv2.sigma", theirs.conv2.sigma, o.weights[1].sigma),
         ("dense1.sigma", theirs.dense1.sigma, o.weights[2].sigma), ("dense2.weight", theirs.dense2.weight, o.weights[3].weight),
         ("bn1.weight", theirs.bn1.weight, o.norms[0].weight), ("bn3.bias", theirs.bn3.bias, o.norms[2].bias)]
for name, a, b in pairs:
    print("%-14s |grad| %.4e  max rel diff %.2e" % (name, a.grad.norm().item(), ((a.grad - b.grad).abs().max() / a.grad.abs().max()).item()))
