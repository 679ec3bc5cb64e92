"""The PyTorch side of benchmarks/episode_speed.py: the same per-episode evaluation.

Runs as a worker (train_speed.TorchWorker's protocol: one JSON command per stdin line, one JSON
answer per stdout line) under an interpreter that has torch; the library never imports torch.
  {"cmd": "setup", "inputs": DIR, "case": {encoder, encoder_kwargs, mean, std, device}}
      loads DIR/pool.npy (uint8 NHWC), DIR/episodes.npz and DIR/weights.npz (the JAX network's
      weights in torch_step.encoder's layer order).
  {"cmd": "time", "episodes": n}  runs episodes 0..n-1; answers seconds and accuracies.
  {"cmd": "features", "episode": e}  pooled features of episode e's images (a check).
  {"cmd": "quit"}
Per episode: embed its support + query images in eval mode, class-mean prototypes of the
L2-normalised pooled features, cosine nearest prototype, accuracy.
"""

import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from torch_step import synchronize, encoder, serve


class Peer:
  """The network, the pool of images and the episodes of one case, on `case["device"]`."""

  def setup(self, case: dict, inputs: str) -> dict:
    self.device = torch.device(case["device"])
    pool = np.load(os.path.join(inputs, "pool.npy"))
    self.pool = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(self.device)
    with np.load(os.path.join(inputs, "episodes.npz")) as f:
      self.idx = torch.from_numpy(
          np.concatenate([f["support_idx"], f["query_idx"]], axis=1).astype(np.int64)
      ).to(self.device)
      self.support_labels = torch.from_numpy(f["support_labels"].astype(np.int64)).to(self.device)
      self.query_labels = torch.from_numpy(f["query_labels"].astype(np.int64)).to(self.device)
    self.n_way = int(self.support_labels.max()) + 1
    self.model = encoder(case["encoder"], pool.shape[-1], case["encoder_kwargs"])
    with np.load(os.path.join(inputs, "weights.npz")) as f:
      self._load(f)
    self.model = self.model.eval().to(self.device)
    self.mean = torch.tensor(case["mean"], device=self.device).view(1, -1, 1, 1)
    self.std = torch.tensor(case["std"], device=self.device).view(1, -1, 1, 1)
    return {"params": sum(p.numel() for p in self.model.parameters())}

  def _load(self, arrays) -> None:
    layers = [m for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    names = sorted({k[:3] for k in arrays.files})
    if len(names) != len(layers):
      raise ValueError(f"{len(names)} JAX layers for {len(layers)} PyTorch layers")
    for i, layer in zip(names, layers):
      kind = "conv" if isinstance(layer, nn.Conv2d) else "bn"
      fields = (
          ("weight", "bias")
          if kind == "conv"
          else ("weight", "bias", "running_mean", "running_var")
      )
      for field in fields:
        key = f"{i}_{kind}_{field}"
        target = getattr(layer, field)
        if target is None and key not in arrays.files:
          continue
        value = torch.from_numpy(np.ascontiguousarray(arrays[key]))
        if value.shape != target.shape:
          raise ValueError(f"{key}: {tuple(value.shape)} for {tuple(target.shape)}")
        with torch.no_grad():
          target.copy_(value)

  def pooled(self, e: int):
    x = (self.pool[self.idx[e]].float() / 255.0 - self.mean) / self.std
    return self.model(x).mean(dim=(2, 3))

  def episode(self, e: int) -> float:
    f = F.normalize(self.pooled(e), dim=1)
    s = self.support_labels.shape[1]
    one_hot = F.one_hot(self.support_labels[e], self.n_way).float()  # [S, n_way]
    prototypes = F.normalize(one_hot.T @ f[:s] / one_hot.sum(0)[:, None], dim=1)
    predicted = (f[s:] @ prototypes.T).argmax(dim=1)
    return (predicted == self.query_labels[e]).float().mean().item()

  def time(self, episodes: int) -> dict:
    synchronize(self.device)
    start = time.perf_counter()
    with torch.inference_mode():
      accuracies = [self.episode(e) for e in range(episodes)]
    synchronize(self.device)
    return {"seconds": time.perf_counter() - start, "accuracies": accuracies}

  def features(self, e: int) -> dict:
    with torch.inference_mode():
      return {"features": self.pooled(e).cpu().numpy().tolist()}


def main() -> None:
  peer = Peer()
  serve(
      {
          "setup": lambda msg: peer.setup(msg["case"], msg["inputs"]),
          "time": lambda msg: peer.time(msg["episodes"]),
          "features": lambda msg: peer.features(msg["episode"]),
      }
  )


if __name__ == "__main__":
  main()
