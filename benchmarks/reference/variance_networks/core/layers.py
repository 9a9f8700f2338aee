"""The authors' core/layers.py (da-molchanov/variance-networks, variance-networks-pytorch),
only the classes lenet5-vn.py uses, ported from torch 0.3 to current torch:
Variable.sqrt_ -> torch.sqrt, Variable(...) dropped. Arithmetic unchanged."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import Parameter


class ModuleWrapper(nn.Module):
    def set_flag(self, flag_name, value):
        setattr(self, flag_name, value)
        for m in self.children():
            if hasattr(m, 'set_flag'):
                m.set_flag(flag_name, value)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


class FlattenLayer(ModuleWrapper):
    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x.view(-1, self.num_features)


class LinearVariance(ModuleWrapper):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.sigma = Parameter(torch.Tensor(out_features, in_features))
        if bias:
            self.bias = Parameter(torch.Tensor(1, out_features))
        else:
            self.register_parameter('bias', None)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1. / math.sqrt(self.sigma.size(1))
        self.sigma.data.uniform_(-stdv, stdv)
        if self.bias is not None:
            self.bias.data.zero_()

    def forward(self, x):
        if self.bias is not None:
            lrt_mean = self.bias
        else:
            lrt_mean = 0.0
        lrt_std = torch.sqrt(1e-16 + F.linear(x * x, self.sigma * self.sigma))
        if self.training:
            eps = lrt_std.data.new(lrt_std.size()).normal_()
        else:
            eps = 0.0
        return lrt_mean + eps * lrt_std


class ConvVariance(ModuleWrapper):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, bias=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = 1
        self.sigma = Parameter(torch.Tensor(out_channels, in_channels, *self.kernel_size))
        if bias:
            self.bias = Parameter(torch.Tensor(1, out_channels, 1, 1))
        else:
            self.register_parameter('bias', None)
        self.op_nobias = lambda input, kernel: F.conv2d(input, kernel, None, self.stride, self.padding, self.dilation, self.groups)
        self.reset_parameters()

    def reset_parameters(self):
        n = self.in_channels
        for k in self.kernel_size:
            n *= k
        stdv = 1. / math.sqrt(n)
        self.sigma.data.uniform_(-stdv, stdv)
        if self.bias is not None:
            self.bias.data.uniform_(-stdv, stdv)

    def forward(self, x):
        lrt_mean = 0.0
        if self.bias is not None:
            lrt_mean = self.bias
        sigma2 = self.sigma * self.sigma
        lrt_std = torch.sqrt(1e-16 + self.op_nobias(x * x, sigma2))
        if self.training:
            eps = lrt_std.data.new(lrt_std.size()).normal_()
        else:
            eps = 0.0
        return lrt_mean + lrt_std * eps
