"""The PyTorch side of benchmarks/train_speed.py: the same networks and training step.

Runs as a worker under an interpreter that has torch (benchmarks/requirements-benchmark.txt);
the library never imports torch. It reads one JSON command per line on stdin and answers one
JSON line on stdout:
  {"cmd": "setup", "case": {...}, "inputs": DIR}  builds the case's network and optimizer and
      loads DIR/images.npy (uint8 NHWC) and DIR/labels.npy; answers {"params": n}.
  {"cmd": "time", "steps": n}  runs n training steps; answers {"seconds": s}.
  {"cmd": "matmul", "n": n}  times one n x n float32 matmul; answers {"seconds": s}.
  {"cmd": "quit"}
On a GPU ("device": "cuda" in the case) the network and inputs live on the GPU in channels-last
layout, TF32 is allowed for matmuls as it is for cuDNN convolutions (JAX's default precision on
GPU), "dtype": "bfloat16" runs the forward under autocast, and the timers synchronise first.
The step mirrors fsl.train.train_step: normalise, forward in train mode (BatchNorm statistics
update), cosine classifier on the feature map ('dc', every position) or the pooled feature
('gap'), cross-entropy, backward, SGD with Nesterov momentum 0.9 and coupled weight decay.
"""

import json
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, pad: int | None = None):
  pad = k // 2 if pad is None else pad
  return [nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out)]


class ResNet12Block(nn.Module):

  def __init__(self, c_in: int, width: int):
    super().__init__()
    self.body = nn.Sequential(
        *_conv_bn(c_in, width, 3),
        nn.LeakyReLU(0.1),
        *_conv_bn(width, width, 3),
        nn.LeakyReLU(0.1),
        *_conv_bn(width, width, 3),
    )
    self.shortcut = nn.Sequential(*_conv_bn(c_in, width, 1))

  def forward(self, x):
    return F.max_pool2d(F.leaky_relu(self.body(x) + self.shortcut(x), 0.1), 2)


class BasicBlock(nn.Module):

  def __init__(self, c_in: int, width: int, stride: int):
    super().__init__()
    self.body = nn.Sequential(
        *_conv_bn(c_in, width, 3, stride), nn.ReLU(), *_conv_bn(width, width, 3)
    )
    self.shortcut = (
        nn.Sequential(*_conv_bn(c_in, width, 1, stride, 0))
        if stride != 1 or c_in != width
        else nn.Identity()
    )

  def forward(self, x):
    return F.relu(self.body(x) + self.shortcut(x))


class WNConv(nn.Module):
  """Weight-normalised conv with bias, w = g v / ||v|| (torch weight_norm, dim 0)."""

  def __init__(self, c_in: int, c_out: int, k: int, pad: int):
    super().__init__()
    self.v = nn.Parameter(torch.randn(c_out, c_in, k, k) * 0.05)
    self.g = nn.Parameter(self.v.detach().flatten(1).norm(dim=1))
    self.bias = nn.Parameter(torch.zeros(c_out))
    self.pad = pad

  def forward(self, x):
    w = self.v * (self.g / self.v.flatten(1).norm(dim=1))[:, None, None, None]
    return F.conv2d(x, w, self.bias, padding=self.pad)


def encoder(name: str, channels: int, kwargs: dict) -> nn.Module:
  if name in ("resnet12", "resnet12_wide"):
    widths = kwargs.get(
        "widths", (64, 128, 256, 512) if name == "resnet12" else (64, 160, 320, 640)
    )
    blocks, c_in = [], channels
    for w in widths:
      blocks.append(ResNet12Block(c_in, w))
      c_in = w
    return nn.Sequential(*blocks)
  if name == "resnet18":
    widths = (64, 128, 256, 512)
    layers = [*_conv_bn(channels, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for s, w in enumerate(widths):
      for b in range(2):
        layers.append(BasicBlock(c_in, w, 2 if (s > 0 and b == 0) else 1))
        c_in = w
    return nn.Sequential(*layers)
  if name == "cnn13":

    def cba(c_in, c_out, k, pad):
      return [WNConv(c_in, c_out, k, pad), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]

    return nn.Sequential(
        *cba(channels, 128, 3, 1),
        *cba(128, 128, 3, 1),
        *cba(128, 128, 3, 1),
        nn.MaxPool2d(2),
        nn.Dropout(0.5),
        *cba(128, 256, 3, 1),
        *cba(256, 256, 3, 1),
        *cba(256, 256, 3, 1),
        nn.MaxPool2d(2),
        nn.Dropout(0.5),
        *cba(256, 512, 3, 0),
        *cba(512, 256, 1, 0),
        *cba(256, 128, 1, 0),
    )
  if name == "conv4":
    width, pool_blocks = kwargs.get("width", 64), kwargs.get("pool_blocks", 4)
    layers, c_in = [], channels
    for i in range(4):
      layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
      if i < pool_blocks:
        layers.append(nn.MaxPool2d(2))
      c_in = width
    return nn.Sequential(*layers)
  raise ValueError(f"No PyTorch twin for encoder {name!r}.")


class FewShotNet(nn.Module):
  """Encoder + cosine classifier (scale * cos), as fsl.train.FewShotNet."""

  def __init__(self, enc: nn.Module, feat: int, num_classes: int, head: str):
    super().__init__()
    self.encoder, self.head = enc, head
    self.weight = nn.Parameter(torch.randn(feat, num_classes) / feat**0.5)
    self.scale = nn.Parameter(torch.tensor(10.0))

  def forward(self, x):
    f = self.encoder(x)  # [B, C, h, w]
    f = f if self.head == "dc" else f.mean(dim=(2, 3), keepdim=True)
    f = F.normalize(f, dim=1)
    return self.scale * torch.einsum("bchw,ck->bhwk", f, F.normalize(self.weight, dim=0))


class Worker:

  def setup(self, case: dict, inputs: str) -> dict:
    torch.manual_seed(0)
    self.device = torch.device(case.get("device", "cpu"))
    self.autocast_dtype = torch.bfloat16 if case.get("dtype") == "bfloat16" else None
    layout = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
    if self.device.type == "cuda":
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.benchmark = True
    images = np.load(f"{inputs}/images.npy")
    self.labels = torch.from_numpy(np.load(f"{inputs}/labels.npy").astype(np.int64)).to(self.device)
    self.images = (
        torch.from_numpy(images)
        .permute(0, 3, 1, 2)
        .contiguous()
        .to(self.device, memory_format=layout)  # uint8 NCHW
    )
    enc = encoder(case["encoder"], images.shape[-1], case["encoder_kwargs"])
    with torch.no_grad():
      feat = enc(torch.zeros(1, *self.images.shape[1:])).shape[1]
    self.model = (
        FewShotNet(enc, feat, case["num_classes"], case["head"])
        .train()
        .to(self.device, memory_format=layout)
    )
    self.opt = torch.optim.SGD(
        self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    self.mean = torch.tensor(case["mean"], device=self.device).view(1, -1, 1, 1)
    self.std = torch.tensor(case["std"], device=self.device).view(1, -1, 1, 1)
    return {"params": sum(p.numel() for p in self.model.parameters())}

  def step(self) -> None:
    x = (self.images.float() / 255.0 - self.mean) / self.std
    with torch.autocast(
        self.device.type,
        dtype=self.autocast_dtype or torch.float32,
        enabled=self.autocast_dtype is not None,
    ):
      logits = self.model(x).float()
    b, h, w, k = logits.shape
    labels = self.labels[:, None, None].expand(b, h, w)
    loss = F.cross_entropy(logits.reshape(-1, k), labels.reshape(-1))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()

  def time(self, steps: int) -> dict:
    synchronize(self.device)
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    synchronize(self.device)
    return {"seconds": time.perf_counter() - start}


def synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def matmul_seconds(n: int, device: str = "cpu") -> dict:
  device = torch.device(device)
  torch.backends.cuda.matmul.allow_tf32 = True  # As JAX's default precision on GPU.
  a = torch.randn(n, n, device=device)
  a @ a
  synchronize(device)
  start = time.perf_counter()
  a @ a
  synchronize(device)
  return {"seconds": time.perf_counter() - start}


def serve(handlers: dict) -> None:
  """Answers each JSON command line on stdin with `handlers[cmd](msg)`, until "quit".

  A failing command answers {"error": ...}, which the driver raises with its message.
  """
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    try:
      if msg["cmd"] not in handlers:
        raise KeyError(f"unknown command {msg['cmd']!r}")
      reply = handlers[msg["cmd"]](msg)
    except Exception as e:  # pylint: disable=broad-except
      reply = {"error": f"{type(e).__name__}: {e}"}
    reply["threads"] = torch.get_num_threads()
    print(json.dumps(reply), flush=True)


def main() -> None:
  worker = Worker()
  serve(
      {
          "setup": lambda msg: worker.setup(msg["case"], msg["inputs"]),
          "time": lambda msg: worker.time(msg["steps"]),
          "matmul": lambda msg: matmul_seconds(msg["n"], msg.get("device", "cpu")),
      }
  )


if __name__ == "__main__":
  main()
